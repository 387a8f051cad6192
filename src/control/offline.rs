//! Queue commands with no relay running: the caller holds the spool lock, so the files
//! can be changed directly; the next relay start picks the changes up.

use super::{Entry, Request, Response};
use crate::spool::{QueuedMessage, Spool};

pub fn run(spool: &Spool, request: &Request) -> anyhow::Result<Response> {
    let mut all = spool.load_all()?;
    let find = |all: &mut Vec<QueuedMessage>, id| {
        all.iter()
            .position(|m| &m.envelope.id == id)
            .map(|i| all.swap_remove(i))
    };
    let now = crate::delivery::now_unix();
    let response = match request {
        Request::List => Response::Entries(all.iter().map(|m| Entry::of(m, false)).collect()),
        Request::Show { id } => match find(&mut all, id) {
            Some(m) => Response::Entries(vec![Entry::of(&m, false)]),
            None => no_such(id),
        },
        Request::Flush { id } => {
            let mut n = 0;
            for m in all.iter_mut() {
                if id.as_ref().is_some_and(|id| &m.envelope.id != id) || m.state.held {
                    continue;
                }
                m.state.next_attempt = now;
                spool.save_state(&m.envelope.id, &m.state)?;
                n += 1;
            }
            match (id, n) {
                (Some(id), 0) => no_such(id),
                _ => Response::Done(format!(
                    "{n} message(s) due now; no relay is running, so they go at its next start"
                )),
            }
        }
        Request::Remove { id } => match find(&mut all, id) {
            Some(m) => {
                spool.remove(&m.envelope.id)?;
                Response::Done(format!("{id} removed"))
            }
            None => no_such(id),
        },
        Request::Hold { id } | Request::Release { id } => match find(&mut all, id) {
            Some(mut m) => {
                m.state.held = matches!(request, Request::Hold { .. });
                if !m.state.held {
                    m.state.next_attempt = now;
                }
                spool.save_state(&m.envelope.id, &m.state)?;
                let verb = if m.state.held { "held" } else { "released" };
                Response::Done(format!("{id} {verb}"))
            }
            None => no_such(id),
        },
    };
    Ok(response)
}

fn no_such(id: &crate::spool::QueueId) -> Response {
    Response::Error(format!("no message {id} in the queue"))
}
