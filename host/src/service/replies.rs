//! Replies: callers waiting for the reply to a request-response message.
//!
//! Owns the waiters by message id (one mutex, held briefly). A reply is
//! stored in the persistence point that decides it; waiters are answered
//! after that commit, and a late waiter finds it in the store.

use super::{Accepted, Error, ErrorKind, MessageIn, Service};
use cairn_store::Reply;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

#[derive(Default)]
pub struct Replies {
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<Reply>>>>,
}

impl Replies {
    /// Answers everyone waiting for the reply to `message_id`; false if nobody waited here.
    pub fn answer(&self, message_id: &str, reply: Reply) -> bool {
        let waiters = self.waiters.lock().unwrap().remove(message_id).unwrap_or_default();
        let any = !waiters.is_empty();
        for waiter in waiters {
            let _ = waiter.send(reply.clone());
        }
        any
    }

    /// Whether a caller waits here for the reply to `message_id`.
    pub fn waits(&self, message_id: &str) -> bool {
        self.waiters.lock().unwrap().contains_key(message_id)
    }

    fn register(&self, message_id: &str) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().entry(message_id.to_string()).or_default().push(tx);
        rx
    }

    /// Forgets the waiters of `message_id` that gave up (their receiver dropped).
    fn forget_gone(&self, message_id: &str) {
        let mut waiters = self.waiters.lock().unwrap();
        if let Some(list) = waiters.get_mut(message_id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiters.remove(message_id);
            }
        }
    }
}

impl Service {
    /// Waits for the reply to a request-response message.
    pub async fn await_reply(&self, message_id: &str, timeout: std::time::Duration) -> Result<Reply, Error> {
        let rx = self.replies.register(message_id);
        self.reply_to(message_id, rx, true, timeout).await
    }

    /// Accepts a request-response message and waits for its reply. The
    /// waiter is registered before the message is accepted, so the reply to
    /// a new message comes to it straight from the persistence point that
    /// decides it; only a duplicate's reply (or, in a cluster, one decided on
    /// another host) is looked for in the store.
    pub async fn accept_and_await_reply(&self, m: MessageIn, timeout: std::time::Duration) -> Result<(Accepted, Reply), Error> {
        let message_id = m.id_or_new();
        let rx = self.replies.register(&message_id);
        let accepted = match self.accept_message(MessageIn { id: Some(message_id.clone()), ..m }, None).await {
            Ok(accepted) => accepted,
            Err(e) => {
                drop(rx);
                self.replies.forget_gone(&message_id);
                return Err(e);
            }
        };
        let look = accepted.duplicate || self.cluster.is_some();
        let reply = self.reply_to(&message_id, rx, look, timeout).await?;
        Ok((accepted, reply))
    }

    /// Waits on `rx`, registered for `message_id`, for its reply (first in
    /// the store if `look`); then forgets it, however the wait ended.
    async fn reply_to(&self, message_id: &str, rx: oneshot::Receiver<Reply>, look: bool, timeout: std::time::Duration) -> Result<Reply, Error> {
        let answer = self.wait_for_reply(message_id, rx, look, timeout).await;
        self.replies.forget_gone(message_id);
        answer
    }

    async fn wait_for_reply(&self, message_id: &str, rx: oneshot::Receiver<Reply>, look: bool, timeout: std::time::Duration) -> Result<Reply, Error> {
        if look {
            if let Some(stored) = self.store.reply(message_id).await? {
                return Ok(stored);
            }
        }
        // In a cluster the reply may be decided on another host, which
        // notifies (`cluster::listen`); the store is also looked at every
        // 250 ms, in case a notification was lost.
        let polled = async {
            if self.cluster.is_none() {
                return std::future::pending::<Reply>().await;
            }
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                if let Ok(Some(stored)) = self.store.reply(message_id).await {
                    return stored;
                }
            }
        };
        let answered = async {
            tokio::select! {
                r = rx => r.ok(),
                r = polled => Some(r),
            }
        };
        match tokio::time::timeout(timeout, answered).await {
            Ok(Some(reply)) => Ok(reply),
            _ => Err(Error::new(
                ErrorKind::Unavailable,
                format!("no reply to message {message_id} within {timeout:?}; the message was accepted and the reply may still come"),
            )),
        }
    }
}
