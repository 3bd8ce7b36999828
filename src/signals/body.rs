//! Reading an HTTP answer with a ceiling on its size: a server that
//! answers with megabytes (a misrouted request, a broken proxy, a hostile
//! endpoint) is refused after the first bytes past the cap, never read
//! whole into memory.

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {max} bytes{}; refused without reading it", declared.map(|n| format!(" (it declares {n} bytes)")).unwrap_or_default())]
    TooLarge { max: usize, declared: Option<u64> },
    #[error("the answer broke off: {0}")]
    Read(#[source] reqwest::Error),
}

/// The body of `response`, at most `max` bytes: a declared or actual
/// length above it is an error, and reading stops there.
pub async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = response.content_length();
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge { max, declared });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge { max, declared });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
