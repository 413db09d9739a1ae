//! The `wsgi.file_wrapper` fast path: open a file inside one of the app's
//! granted directories (through cap-std, so `..` and symlinks cannot leave
//! the grant) and stream it to the client from the host.

use std::io::SeekFrom;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::config::DirGrant;
use crate::wsgi::BodySender;

const CHUNK: usize = 64 * 1024;

/// Open guest `path` if it is a regular file inside a grant; with its size.
pub fn open_granted(dirs: &[DirGrant], path: &str) -> Option<(std::fs::File, u64)> {
    let (grant, rel) = dirs
        .iter()
        .filter_map(|d| {
            let root = d.guest.trim_end_matches('/');
            let rel = path.strip_prefix(root)?.strip_prefix('/')?;
            (!rel.is_empty()).then_some((d, rel))
        })
        .max_by_key(|(d, _)| d.guest.len())?;
    let dir = cap_std::fs::Dir::open_ambient_dir(&grant.host, cap_std::ambient_authority()).ok()?;
    let file = dir.open(rel).ok()?;
    let meta = file.metadata().ok()?;
    meta.is_file().then(|| (file.into_std(), meta.len()))
}

/// Send `len` bytes of `file` from `offset` into the body channel; a file
/// that ends early, or `short_by` missing bytes the app's Content-Length
/// promised, abort the body so the client sees the truncation.
pub async fn stream(file: std::fs::File, offset: u64, len: u64, short_by: u64, tx: BodySender) {
    let mut file = tokio::fs::File::from_std(file);
    if let Err(e) = file.seek(SeekFrom::Start(offset)).await {
        tx.abort(format!("seeking the file: {e}"));
        return;
    }
    let mut left = len;
    while left > 0 {
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        match file.read(&mut buf).await {
            Ok(0) => {
                tx.abort("file shrank while it was sent".into());
                return;
            }
            Ok(n) => {
                buf.truncate(n);
                left -= n as u64;
                if !tx.send(Bytes::from(buf)).await {
                    return; // client went away
                }
            }
            Err(e) => {
                tx.abort(format!("reading the file: {e}"));
                return;
            }
        }
    }
    if short_by > 0 {
        let why = format!("file is {short_by} bytes shorter than the app's Content-Length");
        tracing::warn!("{why}");
        tx.abort(why);
    }
}
