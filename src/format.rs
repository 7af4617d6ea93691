//! Number formatting that matches EasyNLP's output files: numpy float32 `str()` and Python float `repr()`.

/// Formats a float32 as numpy's `str(np.float32(x))`: shortest round-trip digits, positional for
/// `1e-4 <= |x| < 1e16` (always with a fractional part), scientific otherwise (`1e-05`).
pub fn numpy_f32(x: f32) -> String {
    if !x.is_finite() {
        return non_finite(x as f64);
    }
    layout(&format!("{x:e}"), x == 0.0, (x as f64).abs())
}

/// Formats a float64 as Python's `repr(x)`: the same rules with double-precision digits.
pub fn python_float(x: f64) -> String {
    if !x.is_finite() {
        return non_finite(x);
    }
    layout(&format!("{x:e}"), x == 0.0, x.abs())
}

fn non_finite(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x > 0.0 {
        "inf".into()
    } else {
        "-inf".into()
    }
}

/// Lays out Rust's shortest scientific form (`-1.2345e-5`) the Python way.
fn layout(sci: &str, zero: bool, abs: f64) -> String {
    let (mantissa, exp) = sci.split_once('e').expect("scientific format");
    let exp: i32 = exp.parse().expect("exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if zero {
        return format!("{sign}0.0");
    }
    if (1e-4..1e16).contains(&abs) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let frac = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        let esign = if exp < 0 { "-" } else { "+" };
        format!("{sign}{frac}e{esign}{:02}", exp.abs())
    }
}

/// Python `repr()` of a string: single quotes unless the text holds a single quote and no double quote.
pub fn python_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_float32_str() {
        assert_eq!(numpy_f32(0.1), "0.1");
        assert_eq!(numpy_f32(0.987_654_3), "0.9876543");
        assert_eq!(numpy_f32(1.0), "1.0");
        assert_eq!(numpy_f32(-2.5), "-2.5");
        assert_eq!(numpy_f32(1e-5), "1e-05");
        assert_eq!(numpy_f32(1.5e-5), "1.5e-05");
        assert_eq!(numpy_f32(1e-4), "1e-04");
        assert_eq!(numpy_f32(0.00012), "0.00012");
        assert_eq!(numpy_f32(1e16), "1e+16");
        assert_eq!(numpy_f32(123456.0), "123456.0");
        assert_eq!(numpy_f32(0.0), "0.0");
        assert_eq!(python_float(0.1), "0.1");
        assert_eq!(python_float(1e-4), "0.0001");
        assert_eq!(python_str_repr("it's"), "\"it's\"");
        assert_eq!(python_str_repr("pos"), "'pos'");
    }
}
