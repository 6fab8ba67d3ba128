//! Finding AWS credentials in text: what `deploy` refuses to write into user-data, and what the
//! test suite looks for in the repository and in every file `deploy` generates.

/// Where the first AWS access key id in `text` starts: `AKIA` or `ASIA` and 16 more upper-case
/// letters or digits, not part of a longer such run.
pub fn find_access_key_id(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let key_char = |b: &u8| b.is_ascii_uppercase() || b.is_ascii_digit();
    (0..bytes.len().saturating_sub(19)).find(|&at| {
        let window = &bytes[at..at + 20];
        (window.starts_with(b"AKIA") || window.starts_with(b"ASIA"))
            && window[4..].iter().all(key_char)
            // A longer run of key characters is something else (a hash, a longer id).
            && !bytes.get(at + 20).is_some_and(key_char)
            && !(at > 0 && key_char(&bytes[at - 1]))
    })
}

/// Where the first thing that looks like an AWS secret access key in `text` starts: a run of
/// exactly 40 characters of `A-Z a-z 0-9 / +` holding upper- and lower-case letters and a digit
/// (so not a hex digest, nor a word), within 64 characters after a mention of "secret" or
/// "aws_secret" (case-insensitive), as `aws_secret_access_key = ...` or
/// `"SecretAccessKey": "..."` write it.
pub fn find_secret_access_key(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let key_char = |b: u8| b.is_ascii_alphanumeric() || b == b'/' || b == b'+';
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(found) = lower[from..].find("secret") {
        let mention = from + found;
        let window_end = (mention + "secret".len() + 64).min(bytes.len());
        let mut at = mention + "secret".len();
        while at < window_end {
            if !key_char(bytes[at]) || (at > 0 && key_char(bytes[at - 1])) {
                at += 1;
                continue;
            }
            let run = bytes[at..].iter().take_while(|b| key_char(**b)).count();
            let candidate = &bytes[at..at + run];
            if run == 40
                && candidate.iter().any(u8::is_ascii_uppercase)
                && candidate.iter().any(u8::is_ascii_lowercase)
                && candidate.iter().any(u8::is_ascii_digit)
            {
                return Some(at);
            }
            at += run.max(1);
        }
        from = mention + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's documented example credentials, assembled at run time so that this file does not
    // hold them whole.
    fn example_key_id() -> String {
        ["AKIA", "IOSFODNN7", "EXAMPLE"].concat()
    }

    fn example_secret() -> String {
        ["wJalrXUtnFEMI", "/K7MDENG/bPxRfiCY", "EXAMPLEKEY"].concat()
    }

    #[test]
    fn access_key_ids_are_found_where_they_stand_alone() {
        let id = example_key_id();
        assert_eq!(find_access_key_id(&format!("export AWS_ACCESS_KEY_ID={id}\n")), Some(25));
        assert_eq!(find_access_key_id(&format!("x{id}")), Some(1), "after a lower-case letter");
        assert_eq!(find_access_key_id(&format!("{id}Z")), None, "part of a longer run");
        assert_eq!(find_access_key_id("AKIA1234"), None);
    }

    #[test]
    fn secret_keys_are_found_after_a_mention_of_a_secret() {
        let secret = example_secret();
        for text in [
            format!("aws_secret_access_key = {secret}\n"),
            format!("{{\"SecretAccessKey\": \"{secret}\"}}"),
            format!("export AWS_SECRET_ACCESS_KEY='{secret}'"),
        ] {
            let at = find_secret_access_key(&text).unwrap_or_else(|| panic!("not found in {text}"));
            assert_eq!(&text[at..at + 40], secret);
        }
        // Not a key: a hex digest, a key without a mention, a longer run, a cluster secret.
        let hex = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(find_secret_access_key(&format!("secret: {hex}")), None);
        assert_eq!(find_secret_access_key(&format!("value = {secret}")), None);
        assert_eq!(find_secret_access_key(&format!("secret = {secret}A")), None);
        assert_eq!(find_secret_access_key("TANDEM_CLUSTER_SECRET=0f1e2d3c4b5a69788796a5b4c3d2e1f0"), None);
    }
}
