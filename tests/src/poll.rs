//! Waiting for state the way every test here does: poll with a deadline
//! ([`PATIENCE`]) and fail with what never happened, never sleep for it.

use std::time::Duration;

use crate::PATIENCE;

/// How often a condition is looked at again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `check` until it yields `Ok(value)`; panics after [`PATIENCE`]
/// naming `what` and the last `Err`.
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => assert!(
                tokio::time::Instant::now() < deadline,
                "never: {what} (last: {last})"
            ),
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls `check` until it holds; panics after [`PATIENCE`] naming `what`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until(what, || {
        let holds = check();
        async move {
            if holds.await {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        }
    })
    .await
}
