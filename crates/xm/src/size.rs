//! Memory sizes on the command line, as xl reads them (`xl mem-set`, `xl mem-max`): a
//! whole number with at most one unit letter, any case: `b` bytes, `k` KiB, `m` MiB,
//! `g` GiB, `t` TiB; no letter means MiB. xend sets memory in whole MiB, so a size
//! that is not a whole number of MiB is refused rather than rounded.

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("invalid memory size {0:?}: expected a number with an optional unit b, k, m, g or t (default m)")]
    Syntax(String),
    #[error("memory size {0:?} is too large")]
    TooLarge(String),
    #[error("memory size {0:?} is not a whole number of MiB")]
    NotWholeMib(String),
}

/// Text for `--help`.
pub const SIZE_HELP: &str = "Size: a number with an optional unit letter (any case): b bytes, k KiB, m MiB, g GiB, t TiB; no letter means MiB (as xl). It must come to a whole number of MiB.";

/// Parses a size and returns it in MiB.
pub fn parse_mib(text: &str) -> Result<u64, SizeError> {
    let syntax = || SizeError::Syntax(text.to_string());
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(syntax());
    }
    let (num, unit) = text.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| SizeError::TooLarge(text.to_string()))?;
    // Bytes per unit.
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "k" => 1 << 10,
        "" | "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(syntax()),
    };
    let bytes = n
        .checked_mul(scale)
        .ok_or_else(|| SizeError::TooLarge(text.to_string()))?;
    if bytes % (1 << 20) != 0 {
        return Err(SizeError::NotWholeMib(text.to_string()));
    }
    Ok(bytes >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_xl() {
        assert_eq!(parse_mib("256"), Ok(256));
        assert_eq!(parse_mib("256m"), Ok(256));
        assert_eq!(parse_mib("256M"), Ok(256));
        assert_eq!(parse_mib("2g"), Ok(2048));
        assert_eq!(parse_mib("2G"), Ok(2048));
        assert_eq!(parse_mib("1t"), Ok(1 << 20));
        assert_eq!(parse_mib("131072k"), Ok(128));
        assert_eq!(parse_mib("131072K"), Ok(128));
        assert_eq!(parse_mib("1048576b"), Ok(1));
        assert_eq!(parse_mib("0"), Ok(0));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in [
            "", "m", "-1", "+5", " 5", "5 ", "5mb", "5x", "1.5g", "0x10", "5é",
        ] {
            assert_eq!(parse_mib(bad), Err(SizeError::Syntax(bad.into())), "{bad}");
        }
        assert_eq!(
            parse_mib("1000k"),
            Err(SizeError::NotWholeMib("1000k".into()))
        );
        assert_eq!(parse_mib("1b"), Err(SizeError::NotWholeMib("1b".into())));
        assert!(matches!(
            parse_mib("99999999999999999999"),
            Err(SizeError::TooLarge(_))
        ));
        assert!(matches!(
            parse_mib("99999999t"),
            Err(SizeError::TooLarge(_))
        ));
    }
}
