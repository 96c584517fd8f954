//! xend's API as typed calls (the `rxen-xend-api` types), over a [`Transport`].
//! Every call that decodes a reply also returns the reply's JSON as xend sent it, for
//! `--json`. Error statuses become [`XmError::Api`].

use rxen_xend_api::{
    CreateReply, CreateRequest, DiskAttachRequest, DiskDetachQuery, DiskDetachReply, DiskInfo,
    DomainInfo, ErrorReply, HostInfo, ManagedReply, MemoryRequest, NicAttachRequest,
    NicDetachQuery, NicDetachReply, NicInfo, RenameRequest, RestoreRequest, SaveReply, SaveRequest,
    ShutdownQuery, UptimeReply, VcpusRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{XmError, XmResult};
use crate::transport::{Endpoint, Reply, Transport};

/// A decoded reply and its JSON.
pub struct Decoded<T> {
    pub value: T,
    pub json: Value,
}

/// Percent-encodes one path segment (a domain name or id).
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The error a failed reply stands for.
pub fn api_error(status: u16, body: &[u8]) -> XmError {
    match serde_json::from_slice::<ErrorReply>(body) {
        Ok(e) => XmError::Api {
            status,
            code: e.error.code,
            message: e.error.message,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            XmError::Api {
                status,
                code: format!("http_{status}"),
                message: if text.is_empty() {
                    format!("xend answered with status {status}")
                } else {
                    text.chars().take(500).collect()
                },
            }
        }
    }
}

#[derive(Clone)]
pub struct Api {
    transport: Transport,
}

impl Api {
    pub fn new(url: &str, token: Option<String>) -> XmResult<Api> {
        Ok(Api {
            transport: Transport::new(Endpoint::parse(url)?, token),
        })
    }

    /// Sends a request and returns a successful reply still unread (for streams).
    pub fn open(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> XmResult<Reply> {
        let reply = self.transport.send(method, path, body)?;
        if reply.status >= 400 {
            let status = reply.status;
            let body = reply.bytes().unwrap_or_default();
            return Err(api_error(status, &body));
        }
        Ok(reply)
    }

    /// Sends a request and returns the body of a successful reply.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> XmResult<Vec<u8>> {
        self.open(method, path, body)?.bytes()
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> XmResult<Decoded<T>> {
        let body = match body {
            Some(b) => Some((
                "application/json",
                serde_json::to_vec(b).map_err(|e| XmError::Usage(e.to_string()))?,
            )),
            None => None,
        };
        let bytes = self.raw(method, path, body)?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| XmError::BadReply(format!("{method} {path}: not JSON: {e}")))?;
        let value = T::deserialize(&json)
            .map_err(|e| XmError::BadReply(format!("{method} {path}: {e}")))?;
        Ok(Decoded { value, json })
    }

    /// A request whose reply body does not matter.
    fn act(&self, path: &str, body: Option<&impl Serialize>) -> XmResult<()> {
        let body = match body {
            Some(b) => Some((
                "application/json",
                serde_json::to_vec(b).map_err(|e| XmError::Usage(e.to_string()))?,
            )),
            None => None,
        };
        self.raw("POST", path, body).map(|_| ())
    }

    pub fn list(&self) -> XmResult<Decoded<Vec<DomainInfo>>> {
        self.call("GET", "/domains", None::<&()>)
    }

    pub fn domain(&self, id: &str) -> XmResult<Decoded<DomainInfo>> {
        self.call("GET", &format!("/domains/{}", enc(id)), None::<&()>)
    }

    pub fn info(&self) -> XmResult<Decoded<HostInfo>> {
        self.call("GET", "/info", None::<&()>)
    }

    pub fn create(&self, req: &CreateRequest) -> XmResult<Decoded<CreateReply>> {
        self.call("POST", "/domains", Some(req))
    }

    pub fn save(&self, id: &str, req: &SaveRequest) -> XmResult<Decoded<SaveReply>> {
        self.call("POST", &format!("/domains/{}/save", enc(id)), Some(req))
    }

    pub fn migrate(
        &self,
        id: &str,
        req: &rxen_xend_api::MigrateRequest,
    ) -> XmResult<Decoded<rxen_xend_api::MigrateReply>> {
        self.call("POST", &format!("/domains/{}/migrate", enc(id)), Some(req))
    }

    pub fn restore(&self, req: &RestoreRequest) -> XmResult<Decoded<CreateReply>> {
        self.call("POST", "/restore", Some(req))
    }

    pub fn new_managed(&self, req: &CreateRequest) -> XmResult<Decoded<ManagedReply>> {
        self.call("POST", "/managed", Some(req))
    }

    pub fn start_managed(&self, name: &str) -> XmResult<Decoded<DomainInfo>> {
        self.call(
            "POST",
            &format!("/managed/{}/start", enc(name)),
            None::<&()>,
        )
    }

    pub fn delete_managed(&self, name: &str) -> XmResult<()> {
        self.raw("DELETE", &format!("/managed/{}", enc(name)), None)
            .map(|_| ())
    }

    pub fn destroy(&self, id: &str) -> XmResult<()> {
        self.raw("DELETE", &format!("/domains/{}", enc(id)), None)
            .map(|_| ())
    }

    pub fn shutdown(&self, id: &str, q: &ShutdownQuery) -> XmResult<()> {
        let query = match q.wait {
            Some(w) => format!("?wait={w}&force={}", q.force),
            None => String::new(),
        };
        self.act(
            &format!("/domains/{}/shutdown{query}", enc(id)),
            None::<&()>,
        )
    }

    pub fn reboot(&self, id: &str) -> XmResult<()> {
        self.act(&format!("/domains/{}/reboot", enc(id)), None::<&()>)
    }

    pub fn pause(&self, id: &str, pause: bool) -> XmResult<()> {
        let op = if pause { "pause" } else { "unpause" };
        self.act(&format!("/domains/{}/{op}", enc(id)), None::<&()>)
    }

    pub fn rename(&self, id: &str, name: &str) -> XmResult<()> {
        let body = RenameRequest { name: name.into() };
        self.act(&format!("/domains/{}/rename", enc(id)), Some(&body))
    }

    pub fn vcpu_set(&self, id: &str, count: u32) -> XmResult<()> {
        let body = VcpusRequest { count };
        self.act(&format!("/domains/{}/vcpus", enc(id)), Some(&body))
    }

    /// `maxmem` false: the target (`mem-set`); true: the maximum (`mem-max`).
    pub fn memory(&self, id: &str, mib: u64, maxmem: bool) -> XmResult<()> {
        let op = if maxmem { "maxmem" } else { "memory" };
        self.act(
            &format!("/domains/{}/{op}", enc(id)),
            Some(&MemoryRequest { mib }),
        )
    }

    pub fn uptime(&self, id: &str) -> XmResult<Decoded<UptimeReply>> {
        self.call("GET", &format!("/domains/{}/uptime", enc(id)), None::<&()>)
    }

    /// The tail of a domain's console output, as bytes.
    pub fn console(&self, id: &str) -> XmResult<Vec<u8>> {
        self.raw("GET", &format!("/domains/{}/console", enc(id)), None)
    }

    pub fn console_input(&self, id: &str, text: &[u8]) -> XmResult<()> {
        self.raw(
            "POST",
            &format!("/domains/{}/console", enc(id)),
            Some(("text/plain; charset=utf-8", text.to_vec())),
        )
        .map(|_| ())
    }

    pub fn disks(&self, id: &str) -> XmResult<Decoded<Vec<DiskInfo>>> {
        self.call("GET", &format!("/domains/{}/disks", enc(id)), None::<&()>)
    }

    pub fn attach_disk(&self, id: &str, disk: &str) -> XmResult<Decoded<DiskInfo>> {
        let body = DiskAttachRequest { disk: disk.into() };
        self.call("POST", &format!("/domains/{}/disks", enc(id)), Some(&body))
    }

    pub fn detach_disk(
        &self,
        id: &str,
        dev: &str,
        q: &DiskDetachQuery,
    ) -> XmResult<Decoded<DiskDetachReply>> {
        let mut query = format!("?force={}", q.force);
        if let Some(w) = q.wait {
            query.push_str(&format!("&wait={w}"));
        }
        self.call(
            "DELETE",
            &format!("/domains/{}/disks/{}{query}", enc(id), enc(dev)),
            None::<&()>,
        )
    }

    pub fn nics(&self, id: &str) -> XmResult<Decoded<Vec<NicInfo>>> {
        self.call("GET", &format!("/domains/{}/nics", enc(id)), None::<&()>)
    }

    pub fn attach_nic(&self, id: &str, nic: &str) -> XmResult<Decoded<NicInfo>> {
        let body = NicAttachRequest { nic: nic.into() };
        self.call("POST", &format!("/domains/{}/nics", enc(id)), Some(&body))
    }

    pub fn detach_nic(
        &self,
        id: &str,
        dev: &str,
        q: &NicDetachQuery,
    ) -> XmResult<Decoded<NicDetachReply>> {
        let mut query = format!("?force={}", q.force);
        if let Some(w) = q.wait {
            query.push_str(&format!("&wait={w}"));
        }
        self.call(
            "DELETE",
            &format!("/domains/{}/nics/{}{query}", enc(id), enc(dev)),
            None::<&()>,
        )
    }

    pub fn dmesg(&self) -> XmResult<Vec<u8>> {
        self.raw("GET", "/dmesg", None)
    }

    /// The server-sent event stream.
    pub fn events(&self) -> XmResult<Reply> {
        self.open("GET", "/events", None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_become_api_errors() {
        let e = api_error(
            404,
            br#"{"error":{"code":"no_such_domain","message":"no domain nope"}}"#,
        );
        assert_eq!(e.to_string(), "no domain nope (no_such_domain)");
        let e = api_error(502, b"<html>bad gateway</html>");
        assert_eq!(e.to_string(), "<html>bad gateway</html> (http_502)");
        let e = api_error(500, b"");
        assert_eq!(e.to_string(), "xend answered with status 500 (http_500)");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(enc("web-1.a_b"), "web-1.a_b");
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        assert_eq!(enc("é"), "%C3%A9");
    }
}
