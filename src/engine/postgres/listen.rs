//! The LISTEN connection that wakes this process's waiters when a slot is
//! released (see `ReleaseListener` in the engine module).

use crate::engine::Listening;
use tokio_postgres::AsyncMessage;

/// One connection LISTENing on `channel`, waking local waiters for each
/// notification until the connection ends.
pub(super) async fn listen<T>(
    config: &tokio_postgres::Config,
    tls: T,
    channel: &str,
    l: Listening,
) -> Result<(), tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await?;
    // The connection must be polled for LISTEN to complete, so it is driven
    // here and its notifications handed to the hub as they arrive.
    let hub = l.clone();
    let driver = async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => match hub.hub() {
                    Some(h) => h.notify(n.payload()),
                    None => return Ok(()),
                },
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let subscribe = async {
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await?;
        l.started();
        // Keep the client (and so the connection) alive while the driver runs.
        std::future::pending::<()>().await;
        Ok::<(), tokio_postgres::Error>(())
    };
    tokio::select! {
        r = driver => r,
        r = subscribe => r,
    }
}
