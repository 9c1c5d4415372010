//! Whether a failure is worth another attempt within the same run. Most are (a link cut, a
//! timeout, a busy receiver, a server's 5xx); some are not, and retrying them only delays the
//! run's end and repeats the same warning: a host key or a key file refused, a protocol version
//! apart, a directory that is not mounted, a bucket that answers 4xx. The code that knows marks
//! them [`Final`]; `spray` retries the rest.

/// A failure that another attempt in this run would meet again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Final(pub String);

/// A [`Final`] error with `message`.
pub fn final_error(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Final(message.into()))
}

/// `error` as it is, marked final: its message and causes read the same.
pub fn mark_final(error: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Marked(error))
}

#[derive(Debug)]
struct Marked(anyhow::Error);

impl std::fmt::Display for Marked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for Marked {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Whether `error`, or anything it wraps, is final.
pub fn is_final(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.is::<Final>() || e.is::<Marked>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_final_cause_stays_final_under_context() {
        let error = Err::<(), _>(final_error("host key mismatch"))
            .context("peer m1")
            .unwrap_err();
        assert!(is_final(&error));
        assert_eq!(format!("{error:#}"), "peer m1: host key mismatch");
        assert!(!is_final(&anyhow::anyhow!("connection refused")));
        let io = Err::<(), _>(std::io::Error::other("reset"))
            .context("sending")
            .unwrap_err();
        assert!(!is_final(&io));
        let marked = mark_final(
            Err::<(), _>(anyhow::anyhow!("HTTP 403"))
                .context("bucket 'b'")
                .unwrap_err(),
        );
        assert!(is_final(&marked));
        assert_eq!(format!("{marked:#}"), "bucket 'b': HTTP 403");
        assert!(is_final(&marked.context("spraying")));
    }
}
