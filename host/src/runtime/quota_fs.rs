//! `wasi:filesystem` with quotas: linked over wasmtime-wasi's own
//! implementation, it forwards every call to it and charges the ledger of the
//! tree a descriptor belongs to before anything that can take disk space
//! (writes, `set-size`, new files, directories and symlinks), credits what is
//! truncated or deleted, and holds each app to its count of open host files.
//! Descriptors outside quota'd trees are only counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    ErrorCode, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::bindings::filesystem::{preopens, types};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, FsError, FsResult, InputStream, OutputStream, Pollable,
    StreamError, StreamResult,
};

use crate::runtime::disk_quota::{FileId, Handle, Ledger, WarnEvery, BLOCK};
use crate::runtime::file_reads::FileReader;
use crate::runtime::file_writes::FileWriter;
use crate::runtime::lock_dirs;

/// How many host files (and directories) one app's instances may hold
/// open together: each `open-at` takes a host descriptor, and the process
/// has a limited number of them for every app and every connection.
pub struct OpenFiles {
    limit: usize,
    open: AtomicUsize,
    /// Files the host sends for the app (`wsgi.file_wrapper`), held while
    /// clients take them: as many again as the app's own, apart from them,
    /// so clients that do not read cannot use up what the app opens.
    sent: AtomicUsize,
    /// Whose, for the log line a refusal writes.
    app: Arc<str>,
    warned: WarnEvery,
    sent_warned: WarnEvery,
    /// Listings that left out a name WASI cannot carry.
    unlisted_warned: WarnEvery,
    refusals: prometheus_client::metrics::counter::Counter,
    /// `rsgi_wasm_open_files{tenant}`: `open` and `sent` together.
    held: prometheus_client::metrics::gauge::Gauge,
}

/// Every app's count, to name the one holding the most when the
/// process's share is full: the app refused is seldom the one to blame.
static APPS: std::sync::Mutex<Vec<std::sync::Weak<OpenFiles>>> = std::sync::Mutex::new(Vec::new());

impl OpenFiles {
    /// At most `limit` open at once by app `app`'s instances.
    pub fn new(limit: usize, app: Arc<str>) -> Arc<Self> {
        // Said at load: otherwise the operator learns only when the app's
        // opens start failing under load, well short of what was granted.
        // Once per app: the default passes the share under a 1024-file
        // limit, and every cold load of every app said it again.
        static WARNED: std::sync::Mutex<Vec<Arc<str>>> = std::sync::Mutex::new(Vec::new());
        let first = || {
            let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
            let new = !warned.contains(&app);
            if new {
                warned.push(app.clone());
            }
            new
        };
        if limit > PROCESS_FILES.limit && first() {
            tracing::warn!(
                app = %app,
                "max_open_files {limit} is above the {} files all apps may hold open together in this \
                 process (half its open-file limit): the app's opens fail there first; raise the limit \
                 (`ulimit -n`, systemd's LimitNOFILE) or lower --max-open-files / `max_open_files`",
                PROCESS_FILES.limit
            );
        }
        let files = Arc::new(OpenFiles {
            limit,
            open: AtomicUsize::new(0),
            sent: AtomicUsize::new(0),
            refusals: crate::metrics::open_files_refusals(&app),
            held: crate::metrics::open_files(&app),
            app,
            warned: WarnEvery::default(),
            sent_warned: WarnEvery::default(),
            unlisted_warned: WarnEvery::default(),
        });
        let mut apps = APPS.lock().unwrap_or_else(|e| e.into_inner());
        apps.retain(|a| a.strong_count() > 0);
        apps.push(Arc::downgrade(&files));
        files
    }

    /// Say (at most once a minute) that a listing left out a name that is
    /// not UTF-8: the app would otherwise not know why a file is missing.
    fn unlisted(&self) {
        if self.unlisted_warned.due() {
            tracing::warn!(
                app = %self.app,
                "a directory listing left out a file whose name is not UTF-8, which WASI cannot carry: rename it for the app to see it"
            );
        }
    }

    /// One more in `count` (at most the app's limit) and in the process's
    /// share for guests, or which of the two was full.
    fn count_in(&self, count: &AtomicUsize) -> Result<(), Full> {
        let process = &*PROCESS_FILES;
        if !count_up(count, self.limit) {
            return Err(Full::App);
        }
        if !count_up(&process.open, process.limit) {
            count.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Process);
        }
        self.held.inc();
        Ok(())
    }

    /// One more host descriptor, unless the app or the process is at its
    /// limit; `refused` says what the guest got instead, for the log: what
    /// the app sees (ENOMEM, EMFILE) says little, so the operator is told
    /// why.
    fn take(self: &Arc<Self>, refused: &str) -> Option<Arc<FdSlot>> {
        let full = match self.count_in(&self.open) {
            Ok(()) => return Some(Arc::new(FdSlot(self.clone()))),
            Err(full) => full,
        };
        self.refusals.inc();
        // Worded only when logged: naming the holder walks every app.
        if self.warned.due() {
            let why = match full {
                Full::App => format!(
                    "{} files open, the app's max_open_files (raise it with --max-open-files, \
                     `max_open_files` in tenants.toml)",
                    self.limit
                ),
                Full::Process => process_full(),
            };
            tracing::warn!(
                app = %self.app,
                "{why}: {refused} (logged at most once a minute)"
            );
        }
        None
    }

    /// Count the host's own descriptor for a file it sends for the app
    /// (`wsgi.file_wrapper`), which outlives the request's instance while
    /// a slow client takes it: at most `max_open_files` of them, apart
    /// from the app's own opens (which anonymous clients that never read
    /// would otherwise use up), and within the process's share for guests.
    /// `None` at either limit: the app then streams the file itself, from
    /// its instance, as it would any body.
    pub fn take_sent_file(self: &Arc<Self>) -> Option<SentFileSlot> {
        let full = match self.count_in(&self.sent) {
            Ok(()) => return Some(SentFileSlot(self.clone())),
            Err(full) => full,
        };
        if self.sent_warned.due() {
            let full = match full {
                Full::App => format!(
                    "{} files already being sent for wsgi.file_wrapper (--max-open-files, \
                     `max_open_files` in tenants.toml) to clients that have not taken them",
                    self.limit
                ),
                Full::Process => process_full(),
            };
            tracing::warn!(
                app = %self.app,
                "{full}: the app streams the next files itself, each holding an instance until \
                 its client has taken it (logged at most once a minute)"
            );
        }
        None
    }
}

/// Which count a host descriptor was refused by.
enum Full {
    /// The app's own (`max_open_files`).
    App,
    /// The process's share for all guests.
    Process,
}

/// Why a descriptor was refused by the process's share, for the log,
/// naming the app that holds the most.
fn process_full() -> String {
    let top = APPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .map(|a| (a.held.get(), a.app.clone()))
        .max_by_key(|(n, _)| *n);
    let holder = top.map_or(String::new(), |(n, app)| {
        format!("; app {app} holds the most, {n}")
    });
    format!(
        "{} files open by all apps together, half the process's open-file limit{holder} (raise \
         the limit with `ulimit -n` or systemd's LimitNOFILE, or lower that app's max_open_files)",
        PROCESS_FILES.limit
    )
}

/// Add one to `open` unless it is at `limit` already.
fn count_up(open: &AtomicUsize, limit: usize) -> bool {
    open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < limit).then_some(n + 1)
    })
    .is_ok()
}

/// Host files all apps' guests hold open together. Each app's own cap
/// (`max_open_files`) does not stop many apps from taking every descriptor
/// of the process, and then connections cannot be accepted: guests get at
/// most half of the open-file limit (raised to the hard one at start),
/// connections, compiled code and the cache keep the rest.
struct ProcessFiles {
    limit: usize,
    open: AtomicUsize,
}

static PROCESS_FILES: std::sync::LazyLock<ProcessFiles> = std::sync::LazyLock::new(|| {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    ProcessFiles {
        limit: nofile.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX)),
        open: AtomicUsize::new(0),
    }
});

/// The host files all apps' guests may hold open together.
pub fn guests_share() -> usize {
    PROCESS_FILES.limit
}

/// One host descriptor counted against its app and the process; shared by
/// the guest descriptor and every stream made from it, as the host file is.
struct FdSlot(Arc<OpenFiles>);

impl Drop for FdSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.held.dec();
        PROCESS_FILES.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The quota'd trees of one instance and the descriptors open in them.
pub struct Quotas {
    /// Preopen name (guest path) → its tree's ledger.
    roots: Vec<(String, Arc<Ledger>)>,
    /// The app's open-file count.
    files: Arc<OpenFiles>,
    /// Descriptor (table index) → what it is charged to. Dropping an entry
    /// closes its handle and slot, so an instance that ends without closing
    /// its files still gives their space and count back.
    open: HashMap<u32, Tracked>,
    /// TCP socket (table index) → its count among the open files.
    sockets: HashMap<u32, Arc<FdSlot>>,
    /// Lock directories the instance made (see `lock_dirs`).
    locks: lock_dirs::Held<Arc<FdSlot>>,
}

/// A host descriptor counted for a file the host sends for the app, until
/// it is dropped.
pub struct SentFileSlot(Arc<OpenFiles>);

impl Drop for SentFileSlot {
    fn drop(&mut self) {
        self.0.sent.fetch_sub(1, Ordering::AcqRel);
        self.0.held.dec();
        PROCESS_FILES.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A host descriptor counted for a TCP socket about to be made.
pub struct SocketSlot(Arc<FdSlot>);

#[derive(Default)]
struct Tracked {
    /// The quota'd tree it is in.
    ledger: Option<Arc<Ledger>>,
    /// A file in that tree.
    handle: Option<Handle>,
    /// Its host descriptor (none for preopens, which share the host's).
    slot: Option<Arc<FdSlot>>,
}

impl Quotas {
    /// Count the instance's open files in `files`.
    pub fn new(files: Arc<OpenFiles>) -> Self {
        Quotas {
            roots: Vec::new(),
            files,
            open: HashMap::new(),
            sockets: HashMap::new(),
            locks: lock_dirs::Held::default(),
        }
    }

    /// Count a TCP socket about to be made among the open files, the app's
    /// and the process's: each is a host descriptor too. None if a limit
    /// is reached.
    pub fn take_socket(&mut self) -> Option<SocketSlot> {
        self.files
            .take("a new socket failed with EMFILE")
            .map(SocketSlot)
    }

    /// Give back the counts of the sockets (table indexes) that are `closed`.
    pub fn forget_sockets(&mut self, closed: impl Fn(u32) -> bool) {
        if !self.sockets.is_empty() {
            self.sockets.retain(|&rep, _| !closed(rep));
        }
    }

    /// Another hold on the count of the socket at table index `rep`, for
    /// what outlives the guest's hold on it (`tcp_sends`).
    pub fn socket_slot(&self, rep: u32) -> Option<SocketSlot> {
        self.sockets.get(&rep).cloned().map(SocketSlot)
    }

    /// Hold `slot` while the socket at table index `rep` is open (or
    /// until the instance ends).
    pub fn hold_socket(&mut self, rep: u32, slot: SocketSlot) {
        self.sockets.insert(rep, slot.0);
    }

    /// Charge what the guest stores under preopen `guest` to `ledger`.
    pub fn add_root(&mut self, guest: &str, ledger: Arc<Ledger>) {
        self.roots.push((guest.to_owned(), ledger));
    }

    fn ledger(&self, fd: &Resource<types::Descriptor>) -> Option<&Arc<Ledger>> {
        self.open.get(&fd.rep())?.ledger.as_ref()
    }

    fn file(&self, fd: &Resource<types::Descriptor>) -> Option<&Handle> {
        self.open.get(&fd.rep())?.handle.as_ref()
    }

    /// What a stream made from `fd` must hold while it lives.
    fn hold(&self, fd: &Resource<types::Descriptor>) -> Held {
        match self.open.get(&fd.rep()) {
            None => Held::default(),
            Some(t) => Held {
                handle: t.handle.as_ref().map(Handle::dup),
                _slot: t.slot.clone(),
            },
        }
    }
}

/// A file's charge and descriptor count, held by a stream.
#[derive(Default)]
struct Held {
    handle: Option<Handle>,
    _slot: Option<Arc<FdSlot>>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.handle.is_none() && self._slot.is_none()
    }
}

/// The store data the shadowing `wasi:filesystem` sees.
pub struct QuotaFsView<'a> {
    /// wasmtime-wasi's own view, which does the work.
    pub fs: WasiFilesystemCtxView<'a>,
    /// The instance's quota'd trees.
    pub quotas: &'a mut Quotas,
}

struct QuotaFs;

impl HasData for QuotaFs {
    type Data<'a> = QuotaFsView<'a>;
}

/// Link `wasi:filesystem/{types,preopens}` over wasmtime-wasi's, which must
/// be in `linker` already (with shadowing allowed).
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> QuotaFsView<'_>,
) -> anyhow::Result<()> {
    types::add_to_linker::<T, QuotaFs>(linker, view)?;
    preopens::add_to_linker::<T, QuotaFs>(linker, view)?;
    Ok(())
}

fn no_space() -> FsError {
    ErrorCode::InsufficientSpace.into()
}

/// What a path names, looked at before a change that may free or take space.
#[derive(Clone, Copy)]
struct Meta {
    id: FileId,
    size: u64,
    /// Removing this name frees the object (its last link, or a directory).
    last_link: bool,
}

impl Meta {
    fn of(m: &cap_std::fs::Metadata) -> Self {
        use cap_std::fs::MetadataExt;
        Meta {
            id: (m.dev(), m.ino()),
            size: if m.is_dir() || m.file_type().is_symlink() {
                BLOCK
            } else {
                m.len()
            },
            last_link: m.is_dir() || m.nlink() <= 1,
        }
    }
}

impl QuotaFsView<'_> {
    fn dir(&self, fd: &Resource<types::Descriptor>) -> FsResult<Arc<cap_std::fs::Dir>> {
        match self.fs.table.get(fd)? {
            Descriptor::Dir(d) => Ok(d.dir.clone()),
            Descriptor::File(_) => Err(ErrorCode::NotDirectory.into()),
        }
    }

    /// Whether `path` under directory `fd` is something opening could wait
    /// on (a FIFO, a socket, a device): only an operator can put one in a
    /// grant, and file system calls run on the guest's thread, where a
    /// wait would hold a runtime thread past any timeout.
    fn waits_to_open(&self, fd: &Resource<types::Descriptor>, path: &str, follow: bool) -> bool {
        let Ok(dir) = self.dir(fd) else {
            return false;
        };
        let meta = if follow {
            dir.metadata(path)
        } else {
            dir.symlink_metadata(path)
        };
        meta.is_ok_and(|m| is_special(&m.file_type()))
    }

    /// `path` under directory `fd`, not following a final symlink unless
    /// `follow`; `None` if it does not exist (or cannot be looked at).
    fn look(
        &self,
        fd: &Resource<types::Descriptor>,
        path: &str,
        follow: bool,
    ) -> FsResult<impl std::future::Future<Output = FsResult<Option<Meta>>> + Send + 'static> {
        let dir = self.dir(fd)?;
        let path = path.to_owned();
        Ok(async move {
            // On the guest's thread, charged to its tenant (see sandbox.rs).
            let meta = if follow {
                dir.metadata(&path)
            } else {
                dir.symlink_metadata(&path)
            };
            Ok(meta.ok().map(|m| Meta::of(&m)))
        })
    }

    /// The directory holding `path` under `fd`, opened once so that what
    /// is checked is what moves (a path looked up again could lead
    /// elsewhere by then, through a directory another instance swapped for
    /// a symlink), and `EPERM` if the move would carry a symlink with `..`
    /// in its target (`path` itself, or one under it when `descend`) to
    /// another directory. Only the host makes such links (`symlink_at`
    /// refuses them); from elsewhere, or through a symlinked directory,
    /// they could point out of the grant. `not_a_name` is the error for a
    /// path ending in `.` or `..`.
    async fn move_source(
        &mut self,
        fd: &Resource<types::Descriptor>,
        path: &str,
        descend: bool,
        not_a_name: ErrorCode,
    ) -> FsResult<MoveSource> {
        let (parent, name) = match split_last(path) {
            Ok(split) => split,
            Err(LastName::Missing) => return Err(ErrorCode::NoEntry.into()),
            Err(LastName::Absolute) => return Err(ErrorCode::NotPermitted.into()),
            Err(LastName::Dots) => return Err(not_a_name.into()),
        };
        let dir = HostDescriptor::open_at(
            &mut self.fs,
            Resource::new_borrow(fd.rep()),
            types::PathFlags::SYMLINK_FOLLOW,
            parent.to_owned(),
            types::OpenFlags::DIRECTORY,
            types::DescriptorFlags::READ,
        )
        .await?;
        let source = MoveSource {
            dir,
            name: name.to_owned(),
        };
        let (handle, name) = (self.dir(&source.dir), source.name.clone());
        // On the guest's thread, charged to its tenant (see sandbox.rs).
        let checked = handle.map(|handle| has_climbing_link(&handle, &name, descend));
        let refused = match checked {
            Ok(false) => return Ok(source),
            Ok(true) => ErrorCode::NotPermitted.into(),
            Err(e) => e,
        };
        self.close(source)?;
        Err(refused)
    }

    /// Close the directory a move took its name from.
    fn close(&mut self, source: MoveSource) -> FsResult<()> {
        HostDescriptor::drop(&mut self.fs, source.dir).map_err(FsError::trap)
    }

    /// Rename `source` to `new_path` under `new_fd`, crediting `ledger`
    /// (whose namespace the caller holds) with a file the rename replaced.
    async fn rename_from(
        &mut self,
        source: &MoveSource,
        ledger: Option<Arc<Ledger>>,
        new_fd: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let old = Resource::new_borrow(source.dir.rep());
        // Only a quota'd tree needs to know what the rename replaced.
        let (from, replaced) = match ledger {
            Some(_) => (
                self.look(&old, &source.name, false)?.await?,
                self.look(&new_fd, &new_path, false)?.await?,
            ),
            None => (None, None),
        };
        let name = source.name.clone();
        HostDescriptor::rename_at(&mut self.fs, old, name, new_fd, new_path).await?;
        if let (Some(ledger), Some(from), Some(gone)) = (ledger, from, replaced) {
            // Renaming a name onto another link of itself changes nothing.
            if from.id != gone.id {
                ledger.removed(gone.id, gone.size, gone.last_link);
            }
        }
        Ok(())
    }

    /// For a new directory or symlink under `fd`: if its tree has a quota,
    /// lock the tree's namespace and charge the block it will take.
    fn creation(
        &self,
        fd: &Resource<types::Descriptor>,
    ) -> impl std::future::Future<Output = FsResult<Option<Creation>>> + Send + 'static {
        let ledger = self.quotas.ledger(fd).cloned();
        async move {
            let Some(ledger) = ledger else {
                return Ok(None);
            };
            let ns = ledger.lock_namespace().await;
            ledger.reserve(BLOCK).map_err(|_| no_space())?;
            Ok(Some(Creation { ledger, _ns: ns }))
        }
    }

    /// For removing `path` under `fd`: if its tree has a quota, lock the
    /// tree's namespace and look at what the path names, to credit it after.
    fn removal(
        &self,
        fd: &Resource<types::Descriptor>,
        path: &str,
    ) -> FsResult<impl std::future::Future<Output = FsResult<Option<Removal>>> + Send + 'static>
    {
        let ledger = self.quotas.ledger(fd).cloned();
        let look = match ledger {
            Some(_) => Some(self.look(fd, path, false)?),
            None => None,
        };
        Ok(async move {
            let (Some(ledger), Some(look)) = (ledger, look) else {
                return Ok(None);
            };
            let ns = ledger.lock_namespace().await;
            let before = look.await?;
            Ok(Some(Removal {
                ledger,
                _ns: ns,
                before,
            }))
        })
    }

    /// Track a descriptor just opened under a quota'd tree.
    fn track(
        &mut self,
        fd: &Resource<types::Descriptor>,
        ledger: Arc<Ledger>,
        truncated_from: Option<u64>,
        slot: Arc<FdSlot>,
    ) -> FsResult<()> {
        let handle = match self.fs.table.get(fd)? {
            Descriptor::Dir(_) => None,
            Descriptor::File(f) => {
                let m = f.file.metadata().map_err(ErrorCode::from)?;
                let meta = Meta::of(&m);
                Some(ledger.open(meta.id, meta.size, truncated_from))
            }
        };
        let tracked = Tracked {
            ledger: Some(ledger),
            handle,
            slot: Some(slot),
        };
        self.quotas.open.insert(fd.rep(), tracked);
        Ok(())
    }

    fn same_tree(
        &self,
        a: &Resource<types::Descriptor>,
        b: &Resource<types::Descriptor>,
    ) -> FsResult<Option<Arc<Ledger>>> {
        match (self.quotas.ledger(a), self.quotas.ledger(b)) {
            (None, None) => Ok(None),
            (Some(x), Some(y)) if Arc::ptr_eq(x, y) => Ok(Some(x.clone())),
            // Space cannot move between budgets by renaming; EXDEV is what
            // a real mount boundary gives, and Python falls back to a copy.
            _ => Err(ErrorCode::CrossDevice.into()),
        }
    }
}

impl preopens::Host for QuotaFsView<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        let dirs = preopens::Host::get_directories(&mut self.fs)?;
        for (fd, name) in &dirs {
            if let Some((_, l)) = self.quotas.roots.iter().find(|(n, _)| n == name) {
                let tracked = Tracked {
                    ledger: Some(l.clone()),
                    ..Tracked::default()
                };
                self.quotas.open.insert(fd.rep(), tracked);
            }
        }
        Ok(dirs)
    }
}

impl types::Host for QuotaFsView<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.fs, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.fs, err)
    }
}

impl HostDirectoryEntryStream for QuotaFsView<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        // wasmtime-wasi fails the entry of a name that is not UTF-8, and
        // wasi-libc then the whole listing: one such file made a granted
        // directory unlistable (`glob` and `os.walk` found nothing). The
        // others are listed, as natively.
        loop {
            let borrowed = Resource::new_borrow(stream.rep());
            match HostDirectoryEntryStream::read_directory_entry(&mut self.fs, borrowed).await {
                Err(e) if matches!(e.downcast_ref(), Some(ErrorCode::IllegalByteSequence)) => {
                    self.quotas.files.unlisted()
                }
                next => return next,
            }
        }
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        HostDirectoryEntryStream::drop(&mut self.fs, stream)
    }
}

impl HostDescriptor for QuotaFsView<'_> {
    async fn advise(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        HostDescriptor::advise(&mut self.fs, fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        HostDescriptor::sync_data(&mut self.fs, fd).await
    }

    async fn get_flags(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::DescriptorFlags> {
        HostDescriptor::get_flags(&mut self.fs, fd).await
    }

    async fn get_type(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::DescriptorType> {
        HostDescriptor::get_type(&mut self.fs, fd).await
    }

    async fn set_size(
        &mut self,
        fd: Resource<types::Descriptor>,
        size: types::Filesize,
    ) -> FsResult<()> {
        let Some(h) = self.quotas.file(&fd) else {
            return HostDescriptor::set_size(&mut self.fs, fd, size).await;
        };
        let (ledger, id) = (h.ledger().clone(), h.id());
        let was = ledger.size(id);
        let grows = size > was;
        if grows {
            ledger.grow(id, size).map_err(|_| no_space())?;
        }
        // Credit a shrink only once the host did it: a failed truncate
        // (a read-only descriptor, say) must not give space back.
        let r = HostDescriptor::set_size(&mut self.fs, fd, size).await;
        match (&r, grows) {
            (Err(_), true) => ledger.shrunk(id, was),
            (Ok(()), false) => ledger.shrunk(id, size),
            _ => {}
        }
        r
    }

    async fn set_times(
        &mut self,
        fd: Resource<types::Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        HostDescriptor::set_times(&mut self.fs, fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<types::Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        HostDescriptor::read(&mut self.fs, fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<types::Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        if let Some(h) = self.quotas.file(&fd).filter(|_| !buf.is_empty()) {
            let end = offset.saturating_add(buf.len() as u64);
            h.ledger().grow(h.id(), end).map_err(|_| no_space())?;
        }
        HostDescriptor::write(&mut self.fs, fd, buf, offset).await
    }

    async fn read_directory(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<Resource<types::DirectoryEntryStream>> {
        HostDescriptor::read_directory(&mut self.fs, fd).await
    }

    async fn sync(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        HostDescriptor::sync(&mut self.fs, fd).await
    }

    async fn create_directory_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        // A lock directory is held open while it exists: one of the app's
        // open files, refused as an open past the limit is (before the
        // disk is charged, which a refusal would not give back).
        let lock_in = if lock_dirs::is_lock_name(&path) {
            let slot = self
                .quotas
                .files
                .take("a lock directory's mkdir failed with ENOMEM")
                .ok_or(ErrorCode::InsufficientMemory)?;
            Some((self.dir(&fd)?, slot))
        } else {
            None
        };
        let creation = self.creation(&fd).await?;
        let mut r = HostDescriptor::create_directory_at(&mut self.fs, fd, path.clone()).await;
        if let Some((dir, slot)) = lock_in {
            let found = matches!(&r, Err(e) if e.downcast_ref() == Some(&ErrorCode::Exist));
            if found && lock_dirs::break_if_left(&dir, &path) && dir.create_dir(&path).is_ok() {
                r = Ok(());
            }
            if r.is_ok() {
                self.quotas.locks.made(&dir, &path, slot);
            }
        }
        if let Some(c) = creation {
            c.settle(r.is_ok());
        }
        r
    }

    async fn stat(&mut self, fd: Resource<types::Descriptor>) -> FsResult<types::DescriptorStat> {
        HostDescriptor::stat(&mut self.fs, fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        HostDescriptor::stat_at(&mut self.fs, fd, path_flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        HostDescriptor::set_times_at(&mut self.fs, fd, path_flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        // A second name costs a block, like a file (directory entries are
        // disk too), and must stay in the same budget.
        self.same_tree(&fd, &new_descriptor)?;
        // A second name for a symlink (directories have none) is a move
        // that leaves the first in place.
        let source = self
            .move_source(&fd, &old_path, false, ErrorCode::NotPermitted)
            .await?;
        let creation = match self.creation(&new_descriptor).await {
            Ok(c) => c,
            Err(e) => {
                self.close(source)?;
                return Err(e);
            }
        };
        let r = HostDescriptor::link_at(
            &mut self.fs,
            Resource::new_borrow(source.dir.rep()),
            old_path_flags,
            source.name.clone(),
            new_descriptor,
            new_path,
        )
        .await;
        if let Some(c) = creation {
            c.settle(r.is_ok());
        }
        self.close(source)?;
        r
    }

    async fn open_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<types::Descriptor>> {
        if self.waits_to_open(
            &fd,
            &path,
            path_flags.contains(types::PathFlags::SYMLINK_FOLLOW),
        ) {
            return Err(ErrorCode::Access.into());
        }
        // WASI has no EMFILE; ENOMEM is the nearest "no more descriptors".
        let slot = self
            .quotas
            .files
            .take("an open failed with ENOMEM")
            .ok_or(ErrorCode::InsufficientMemory)?;
        let Some(ledger) = self.quotas.ledger(&fd).cloned() else {
            let new =
                HostDescriptor::open_at(&mut self.fs, fd, path_flags, path, oflags, flags).await?;
            let tracked = Tracked {
                slot: Some(slot),
                ..Tracked::default()
            };
            self.quotas.open.insert(new.rep(), tracked);
            return Ok(new);
        };
        // Held through tracking, so no other instance unlinks the file
        // between the open and its handle being counted.
        let _ns = ledger.lock_namespace().await;
        let changes = oflags.intersects(types::OpenFlags::CREATE | types::OpenFlags::TRUNCATE);
        let before = if changes {
            let follow = path_flags.contains(types::PathFlags::SYMLINK_FOLLOW);
            self.look(&fd, &path, follow)?.await?
        } else {
            None
        };
        let creates = before.is_none() && oflags.contains(types::OpenFlags::CREATE);
        if creates {
            ledger.reserve(BLOCK).map_err(|_| no_space())?;
        }
        let opened =
            HostDescriptor::open_at(&mut self.fs, fd, path_flags, path, oflags, flags).await;
        let new = match opened {
            Ok(new) => new,
            Err(e) => {
                if creates {
                    ledger.release(BLOCK);
                }
                return Err(e);
            }
        };
        let truncated_from = before
            .filter(|_| oflags.contains(types::OpenFlags::TRUNCATE))
            .map(|m| m.size);
        if let Err(e) = self.track(&new, ledger.clone(), truncated_from, slot) {
            HostDescriptor::drop(&mut self.fs, new).map_err(FsError::trap)?;
            return Err(e);
        }
        Ok(new)
    }

    fn drop(&mut self, fd: Resource<types::Descriptor>) -> wasmtime::Result<()> {
        self.quotas.open.remove(&fd.rep());
        HostDescriptor::drop(&mut self.fs, fd)
    }

    async fn readlink_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<String> {
        HostDescriptor::readlink_at(&mut self.fs, fd, path).await
    }

    async fn remove_directory_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let removal = self.removal(&fd, &path)?.await?;
        let lock = if lock_dirs::is_lock_name(&path) {
            lock_dirs::key_of(&*self.dir(&fd)?, &path)
        } else {
            None
        };
        HostDescriptor::remove_directory_at(&mut self.fs, fd, path).await?;
        if let Some(key) = lock {
            self.quotas.locks.removed(key);
        }
        if let Some(r) = removal {
            r.done();
        }
        Ok(())
    }

    async fn rename_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        old_path: String,
        new_fd: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let ledger = self.same_tree(&fd, &new_fd)?;
        let _ns = match &ledger {
            Some(ledger) => Some(ledger.lock_namespace().await),
            None => None,
        };
        // No instance can make a link this looks for, so none can appear
        // in the tree between the look and the move.
        let source = self
            .move_source(&fd, &old_path, true, ErrorCode::Busy)
            .await?;
        let r = self.rename_from(&source, ledger, new_fd, new_path).await;
        self.close(source)?;
        r
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        // cap-std refuses absolute targets but makes relative ones that
        // climb out: the guest cannot follow them, but host tools, static
        // file serving or another app granted the parent directory would.
        // Whether `..` stays inside depends on where the link really is,
        // which symlinked directories hide from its path and which a later
        // rename or swapped directory changes; without `..` a link only
        // points below its own directory, wherever that is in the grant.
        if src_path.starts_with('/') || climbs(&src_path) {
            return Err(ErrorCode::NotPermitted.into());
        }
        let creation = self.creation(&fd).await?;
        let r = HostDescriptor::symlink_at(&mut self.fs, fd, src_path, dest_path).await;
        if let Some(c) = creation {
            c.settle(r.is_ok());
        }
        r
    }

    async fn unlink_file_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let removal = self.removal(&fd, &path)?.await?;
        HostDescriptor::unlink_file_at(&mut self.fs, fd, path).await?;
        if let Some(r) = removal {
            r.done();
        }
        Ok(())
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        let held = self.quotas.hold(&fd);
        let file = self.file_of(&fd)?;
        let stream = HostDescriptor::read_via_stream(&mut self.fs, fd, offset)?;
        if let Some(file) = file {
            // The stream keeps the file open: so must its charge and count.
            *self.fs.table.get_mut(&stream)? = Box::new(FileReader::new(file, offset, held));
        }
        Ok(stream)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        let held = self.quotas.hold(&fd);
        refuse_if_full(held.handle.as_ref(), Some(offset))?;
        let file = self.file_of(&fd)?;
        let stream = HostDescriptor::write_via_stream(&mut self.fs, fd, offset)?;
        self.write_inline(&stream, file, Some(offset))?;
        self.wrap_writer(&stream, held, Some(offset))?;
        Ok(stream)
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let held = self.quotas.hold(&fd);
        refuse_if_full(held.handle.as_ref(), None)?;
        let file = self.file_of(&fd)?;
        let stream = HostDescriptor::append_via_stream(&mut self.fs, fd)?;
        self.write_inline(&stream, file, None)?;
        self.wrap_writer(&stream, held, None)?;
        Ok(stream)
    }

    async fn is_same_object(
        &mut self,
        a: Resource<types::Descriptor>,
        b: Resource<types::Descriptor>,
    ) -> wasmtime::Result<bool> {
        HostDescriptor::is_same_object(&mut self.fs, a, b).await
    }

    async fn metadata_hash(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        HostDescriptor::metadata_hash(&mut self.fs, fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        HostDescriptor::metadata_hash_at(&mut self.fs, fd, path_flags, path).await
    }
}

impl QuotaFsView<'_> {
    /// The open file `fd` is, if it is a file.
    fn file_of(
        &self,
        fd: &Resource<types::Descriptor>,
    ) -> FsResult<Option<Arc<cap_std::fs::File>>> {
        Ok(match self.fs.table.get(fd)? {
            Descriptor::File(f) => Some(f.file.clone()),
            Descriptor::Dir(_) => None,
        })
    }

    /// Have a file's output stream write on the guest's thread
    /// ([`FileWriter`]) instead of wasmtime-wasi's blocking threads.
    fn write_inline(
        &mut self,
        stream: &Resource<DynOutputStream>,
        file: Option<Arc<cap_std::fs::File>>,
        position: Option<u64>,
    ) -> FsResult<()> {
        if let Some(file) = file {
            *self.fs.table.get_mut(stream)? = Box::new(FileWriter::new(file, position));
        }
        Ok(())
    }

    /// Put a wrapper around an output stream of a tracked file that charges
    /// its writes (in a quota'd tree) and holds its count.
    fn wrap_writer(
        &mut self,
        stream: &Resource<DynOutputStream>,
        held: Held,
        position: Option<u64>,
    ) -> FsResult<()> {
        if held.is_empty() {
            return Ok(());
        }
        let slot = self.fs.table.get_mut(stream)?;
        let inner = std::mem::replace(slot, Box::new(NoStream));
        *slot = Box::new(HeldWriter {
            inner,
            held,
            position,
            pending: false,
        });
        Ok(())
    }
}

/// The directory a rename or hard link takes a name from, held open.
struct MoveSource {
    dir: Resource<types::Descriptor>,
    /// The name in `dir`, with any trailing `/` the path had.
    name: String,
}

/// Why a path has no last name to move.
#[derive(Debug, PartialEq)]
enum LastName {
    Missing,
    Absolute,
    /// It ends in `.` or `..`.
    Dots,
}

/// `path` as the directory holding its last name (`.` if none is named)
/// and that name, with any trailing `/`.
fn split_last(path: &str) -> Result<(&str, &str), LastName> {
    if path.starts_with('/') {
        return Err(LastName::Absolute);
    }
    let trimmed = path.trim_end_matches('/');
    let start = trimmed.rfind('/').map_or(0, |i| i + 1);
    match &trimmed[start..] {
        "" => Err(LastName::Missing),
        "." | ".." => Err(LastName::Dots),
        _ if start == 0 => Ok((".", path)),
        _ => Ok((&path[..start - 1], &path[start..])),
    }
}

/// Whether a relative symlink target has a `..` component.
fn climbs(target: &str) -> bool {
    target.split('/').any(|part| part == "..")
}

/// How many directories the walk in `has_climbing_link` holds open at
/// once (one per level that still has subdirectories to see): a tree that
/// needs more is refused rather than let take the process's descriptors.
const MAX_OPEN_DIRS: usize = 256;

/// Whether `name` in `dir` is a symlink whose target climbs (`..`), or,
/// with `descend`, a directory with one anywhere under it (links not
/// followed). The walk goes one directory handle at a time, so no path
/// grows past the system's limit; what cannot be looked at counts as
/// climbing, as does a tree too bushy to walk within `MAX_OPEN_DIRS`.
fn has_climbing_link(dir: &cap_std::fs::Dir, name: &str, descend: bool) -> bool {
    use cap_fs_ext::DirExt;
    use std::ffi::OsString;
    use std::io::ErrorKind::NotFound;
    let link_climbs = |dir: &cap_std::fs::Dir, name: &std::ffi::OsStr| match dir.read_link(name) {
        Ok(target) => climbs(&target.to_string_lossy()),
        Err(e) => e.kind() != NotFound,
    };
    // A trailing `/` would follow the link itself.
    let name = name.trim_end_matches('/');
    let meta = match dir.symlink_metadata(name) {
        Ok(meta) => meta,
        // The move fails on its own.
        Err(e) => return e.kind() != NotFound,
    };
    if meta.file_type().is_symlink() {
        return link_climbs(dir, name.as_ref());
    }
    if !meta.is_dir() || !descend {
        return false;
    }
    // Each frame: a directory and its subdirectories not yet seen.
    let mut frames: Vec<(cap_std::fs::Dir, Vec<OsString>)> = Vec::new();
    let mut next = match dir.open_dir_nofollow(name) {
        Ok(d) => Some(d),
        Err(e) => return e.kind() != NotFound,
    };
    loop {
        if let Some(here) = next.take() {
            let Ok(entries) = here.entries() else {
                return true;
            };
            let mut subdirs = Vec::new();
            for entry in entries {
                let Ok(entry) = entry else {
                    return true;
                };
                match entry.file_type() {
                    Ok(t) if t.is_symlink() => {
                        if link_climbs(&here, &entry.file_name()) {
                            return true;
                        }
                    }
                    Ok(t) if t.is_dir() => subdirs.push(entry.file_name()),
                    Ok(_) => {}
                    Err(_) => return true,
                }
            }
            if !subdirs.is_empty() {
                // Seen in name order (popped from the end): the same walk,
                // and the same answer, every time.
                subdirs.sort_unstable_by(|a, b| b.cmp(a));
                if frames.len() == MAX_OPEN_DIRS {
                    return true;
                }
                frames.push((here, subdirs));
            }
        }
        let Some((here, subdirs)) = frames.last_mut() else {
            return false;
        };
        let sub = subdirs.pop().expect("frames with nothing left are popped");
        next = match here.open_dir_nofollow(&sub) {
            Ok(d) => Some(d),
            // Moved or removed since it was listed: not in this tree now.
            Err(e) if e.kind() == NotFound => None,
            Err(_) => return true,
        };
        if subdirs.is_empty() {
            // A chain of single directories holds one handle, not one per level.
            frames.pop();
        }
    }
}

/// A block charged for a directory or symlink about to be made.
struct Creation {
    ledger: Arc<Ledger>,
    _ns: tokio::sync::OwnedMutexGuard<()>,
}

impl Creation {
    /// Keep the charge if it was made, else give it back.
    fn settle(self, made: bool) {
        if !made {
            self.ledger.release(BLOCK);
        }
    }
}

/// A name about to be removed, looked at first.
struct Removal {
    ledger: Arc<Ledger>,
    _ns: tokio::sync::OwnedMutexGuard<()>,
    before: Option<Meta>,
}

impl Removal {
    /// It is gone: credit what it held.
    fn done(self) {
        if let Some(m) = self.before {
            self.ledger.removed(m.id, m.size, m.last_link);
        }
    }
}

/// Refuse a stream that could only grow a file (at or past its end) when
/// not one more byte fits. The wasip2 wasi-libc in componentize-py maps
/// every failed stream *write* to `EIO`, but a failed stream *open* to its
/// real code, so this is where the guest can be told `ENOSPC`.
fn refuse_if_full(handle: Option<&Handle>, position: Option<u64>) -> FsResult<()> {
    let Some(h) = handle else {
        return Ok(());
    };
    let size = h.ledger().size(h.id());
    let start = position.unwrap_or(size);
    if start >= size && !h.ledger().fits(h.id(), start.saturating_add(1)) {
        return Err(no_space());
    }
    Ok(())
}

/// An output stream into a tracked file: in a quota'd tree each write is
/// charged before it is handed on, and refused past the quota.
struct HeldWriter {
    inner: DynOutputStream,
    held: Held,
    /// Where the next byte goes; `None` appends.
    position: Option<u64>,
    /// A write was handed on and may still be running.
    pending: bool,
}

impl HeldWriter {
    /// Charge a write of `len` bytes; the end it reaches, in a quota'd tree.
    fn charge(&mut self, len: usize) -> StreamResult<Option<u64>> {
        let Some(handle) = &self.held.handle else {
            return Ok(None);
        };
        let ledger = handle.ledger();
        let start = match self.position {
            Some(p) => p,
            None => ledger.size(handle.id()),
        };
        let end = start.saturating_add(len as u64);
        ledger.grow(handle.id(), end).map_err(|_| {
            let enospc: std::io::Error = rustix::io::Errno::NOSPC.into();
            StreamError::LastOperationFailed(enospc.into())
        })?;
        Ok(Some(end))
    }

    fn advance(&mut self, len: usize) {
        if let Some(p) = &mut self.position {
            *p = p.saturating_add(len as u64);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for HeldWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let len = bytes.len();
        let end = self.charge(len)?;
        self.inner.write(bytes)?;
        if let (Some(h), Some(end)) = (&self.held.handle, end) {
            // It runs in the background until `check_write` says it is done.
            h.ledger().write_started(h.id(), end);
            self.pending = true;
        }
        self.advance(len);
        Ok(())
    }

    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        let len = bytes.len();
        self.charge(len)?;
        self.inner.blocking_write_and_flush(bytes).await?;
        self.advance(len);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let r = self.inner.check_write();
        if self.pending && !matches!(r, Ok(0)) {
            self.pending = false;
            if let Some(h) = &self.held.handle {
                h.ledger().write_done(h.id());
            }
        }
        r
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for HeldWriter {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

/// A FIFO, socket or device: what opening or reading can wait on.
fn is_special(t: &cap_std::fs::FileType) -> bool {
    use cap_std::fs::FileTypeExt;
    t.is_fifo() || t.is_socket() || t.is_char_device() || t.is_block_device()
}

/// Stands in for a stream for the instant it is being wrapped.
pub struct NoStream;

#[wasmtime_wasi::async_trait]
impl Pollable for NoStream {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl InputStream for NoStream {
    fn read(&mut self, _: usize) -> StreamResult<Bytes> {
        Err(StreamError::Closed)
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for NoStream {
    fn write(&mut self, _: Bytes) -> StreamResult<()> {
        Err(StreamError::Closed)
    }

    fn flush(&mut self) -> StreamResult<()> {
        Err(StreamError::Closed)
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Err(StreamError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_with_dot_dot_targets_are_found_at_or_under_a_path() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b/c")).unwrap();
        std::fs::create_dir_all(tmp.path().join("x/y")).unwrap();
        std::os::unix::fs::symlink("../..", tmp.path().join("a/b/up")).unwrap();
        std::os::unix::fs::symlink("c/d..e", tmp.path().join("a/b/down")).unwrap();
        std::os::unix::fs::symlink(".", tmp.path().join("here")).unwrap();
        std::os::unix::fs::symlink("a", tmp.path().join("x/y/to-a")).unwrap();
        let dir =
            cap_std::fs::Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        for (path, descend) in [
            ("a/b/up", false),
            ("a", true),
            ("a/b/", true),
            ("here/a/b/up", false),
            ("here/a", true),
        ] {
            assert!(has_climbing_link(&dir, path, descend), "{path}");
        }
        for (path, descend) in [
            ("a", false),
            ("a/b/down", true),
            ("a/b/c", true),
            ("x", true),
            ("missing", true),
        ] {
            assert!(!has_climbing_link(&dir, path, descend), "{path}");
        }
    }

    #[test]
    fn the_walk_holds_one_handle_per_level_with_subdirectories_left() {
        // (Paths past PATH_MAX: `sandbox::file_escapes_fail_with_oserror`.)
        let tmp = tempfile::tempdir().unwrap();
        let root =
            cap_std::fs::Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        // A chain deeper than MAX_OPEN_DIRS with no links holds one handle
        // at a time; a comb as deep (a sibling at every level) is refused.
        root.create_dir("chain").unwrap();
        root.create_dir("comb").unwrap();
        let (mut chain, mut comb) = (
            root.open_dir("chain").unwrap(),
            root.open_dir("comb").unwrap(),
        );
        for _ in 0..MAX_OPEN_DIRS + 10 {
            chain.create_dir("d").unwrap();
            chain = chain.open_dir("d").unwrap();
            comb.create_dir("d").unwrap();
            comb.create_dir("e").unwrap();
            comb = comb.open_dir("d").unwrap();
        }
        assert!(!has_climbing_link(&root, "chain", true));
        assert!(has_climbing_link(&root, "comb", true));
    }

    #[test]
    fn a_path_splits_into_its_directory_and_last_name() {
        assert_eq!(split_last("a"), Ok((".", "a")));
        assert_eq!(split_last("a/"), Ok((".", "a/")));
        assert_eq!(split_last("a/b/c"), Ok(("a/b", "c")));
        assert_eq!(split_last("a//b//"), Ok(("a/", "b//")));
        assert_eq!(split_last("./a/.."), Err(LastName::Dots));
        assert_eq!(split_last("a/."), Err(LastName::Dots));
        assert_eq!(split_last(""), Err(LastName::Missing));
        assert_eq!(split_last("/etc"), Err(LastName::Absolute));
    }

    #[test]
    fn only_targets_with_dot_dot_climb() {
        for target in ["a", "./a", "a/b", "a..", "..a/b", "a/.../b"] {
            assert!(!climbs(target), "{target}");
        }
        for target in ["..", "../a", "a/../b", "a/..", "./.."] {
            assert!(climbs(target), "{target}");
        }
    }
}
