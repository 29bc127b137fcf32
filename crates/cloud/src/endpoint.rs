//! Where a Chat Completions request goes, from the URL a user gives.

use selfroute_core::CloudError;

/// The `chat/completions` URL for a base such as `https://api.openai.com/v1` (a URL that already
/// ends in `/chat/completions` is kept as it is).
pub fn chat_completions_url(base: &str) -> Result<String, CloudError> {
    let base = base.trim();
    let parsed = reqwest::Url::parse(base)
        .map_err(|e| CloudError::InvalidEndpoint(format!("`{base}`: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(CloudError::InvalidEndpoint(format!(
            "`{base}`: only http and https URLs are supported"
        )));
    }
    Ok(selfroute_core::cloud::with_completions_path(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_become_the_completions_url() {
        assert_eq!(
            chat_completions_url("https://api.openai.com/v1").unwrap(),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            chat_completions_url("http://127.0.0.1:8080/v1/").unwrap(),
            "http://127.0.0.1:8080/v1/chat/completions"
        );
        assert_eq!(
            chat_completions_url("http://h/v1/chat/completions").unwrap(),
            "http://h/v1/chat/completions"
        );
        assert!(chat_completions_url("ftp://h/v1").is_err());
        assert!(chat_completions_url("not a url").is_err());
    }
}
