//! Static file serving from a document root.
//!
//! # Security model
//!
//! * The document root is opened once ([`StaticFiles::new`]) and every lookup is resolved
//!   *relative to that directory fd* with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`,
//!   so the kernel itself refuses any resolution (`..`, absolute or relative symlinks,
//!   `/proc` magic links) that would leave the root. Symlinks that stay inside the root work.
//!   Note that `RESOLVE_BENEATH` also refuses *absolute* symlinks, even ones pointing back
//!   into the root; use relative links inside the tree.
//! * Before the kernel sees anything, the URL path is validated: it must start with `/`,
//!   percent-escapes must be well formed, the decoded bytes must be UTF-8 and free of NUL
//!   and backslashes, and no segment may be `.` or `..` (raw or encoded). Violations are
//!   `400 Bad Request`. Dot segments are *rejected* rather than normalized: browsers remove
//!   them before sending (RFC 3986 §5.2.4), so a request carrying one is not from a
//!   well-behaved client. The decoded path is split on `/` (so a decoded `%2F` is just
//!   another separator) and empty segments are dropped.
//! * Dot-files and dot-directories are `404` unless [`StaticConfig::hidden_files`] is set;
//!   `.well-known` is always allowed.
//! * Only regular files are served. Files are opened with `O_NONBLOCK` so that a FIFO in the
//!   tree cannot block the thread in `open(2)`; FIFOs, sockets and devices are `404`.
//! * When `openat2` is unavailable (`ENOSYS`, Linux < 5.6) we fall back to
//!   `canonicalize` + "starts with the canonical root" followed by an `O_NOFOLLOW` open
//!   relative to the root fd. That fallback has an inherent check-then-open race against
//!   concurrent modification of the tree; it is only a compatibility path.
//!
//! # Blocking I/O
//!
//! All file system calls (`openat2`, `fstat`, `pread`, `getdents`) run directly on the
//! calling (async runtime) thread, as nginx does: the working assumption is that the served
//! tree lives in the page cache, where these calls are cheap and bounded, and a trip through
//! a blocking thread pool would cost more than the syscall. Memory stays bounded: files of up
//! to [`SMALL_FILE_MAX`] bytes are read at once, larger ones are streamed by [`FileStream`] in
//! chunks of at most [`CHUNK_SIZE`] bytes, each read with blocking `pread` when the body is
//! polled.
//!
//! # HTTP features
//!
//! `GET`/`HEAD`, `ETag`/`Last-Modified` with the RFC 9110 §13.2.2 precondition order
//! (`If-Match`, `If-Unmodified-Since`, `If-None-Match`, `If-Modified-Since`), single byte
//! ranges with `If-Range`, precompressed `.br`/`.gz` siblings chosen by `Accept-Encoding`,
//! index files, trailing-slash redirects for directories and optional directory listings.
//!
//! Precompressed variants: among the existing `.br`/`.gz` siblings, the coding with the highest
//! `Accept-Encoding` q-value (> 0; explicit entry, else `*`) wins, `br` on ties; the identity
//! file is sent when none is acceptable or `identity` is *explicitly* rated higher. Without an
//! `Accept-Encoding` header the identity file is sent. The chosen variant's own size and mtime
//! feed `ETag` (suffixed `-br`/`-gz`), `Last-Modified` and ranges; `Content-Type` is always the
//! original file's.
//!
//! Directory listings skip entries whose names are not UTF-8 (they could not be requested)
//! and stop after 10 000 entries.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use super::add_missing;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rustix::fd::OwnedFd;
use rustix::fs::{Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use super::body::Body;
use super::compress::AcceptEncoding;

/// Files up to this size are read into memory in one go and sent as [`Body::Full`].
pub const SMALL_FILE_MAX: u64 = 64 * 1024;

/// Largest chunk [`FileStream`] reads (and holds in memory) at a time.
///
/// 32 KiB: two full TLS records (32,812 bytes on the wire), sent in one `writev`. A chunk of
/// 64 KiB or more is sealed into writes of four records (65,624 bytes), 141 bytes more than
/// loopback's 65,483-byte MSS, so every write left as a full segment plus a 141-byte one. Measured
/// with the 1 MiB bulk workload, one `run.sh` run, 3 rounds (`bench/results/ab-chunk`): per server
/// core, pinned 2.65 GB (128 KiB) / 2.78 (64 KiB) / **3.24 (32 KiB)**, unpinned 2.37 / 2.40 /
/// **3.48**; raw throughput also rose (pinned 2.59 -> 2.73 GB/s, unpinned 2.50 -> 3.16). A smaller
/// chunk also holds less memory per streaming connection.
pub const CHUNK_SIZE: usize = 32 * 1024;

/// A directory listing shows at most this many entries (bounded memory and response size).
const MAX_LISTING_ENTRIES: usize = 10_000;

/// Flags for every file and directory we open below the root.
///
/// `NONBLOCK` keeps `open(2)` of a FIFO from blocking; it has no effect on regular files.
const OPEN_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY)
    .union(OFlags::NONBLOCK);

/// How many times to retry `openat2` when it reports `EAGAIN` (a concurrent rename).
const OPENAT2_RETRIES: u32 = 4;

/// Years past 9999 cannot be formatted as an HTTP date (httpdate panics); clamp before that.
const MAX_HTTP_DATE_SECS: u64 = 253_402_300_799;

/// Characters percent-encoded in listing hrefs: everything but RFC 3986 unreserved.
const HREF_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Configuration of a static file handler.
#[derive(Debug, Clone)]
pub struct StaticConfig {
    /// Document root; must exist and be a directory.
    pub root: PathBuf,
    /// File names tried, in order, when a directory is requested (default `["index.html"]`).
    pub index: Vec<String>,
    /// Generate an HTML listing for directories without an index file (default `false`).
    pub browse: bool,
    /// Serve `<file>.br` / `<file>.gz` siblings when the client accepts them (default `true`).
    pub precompressed: bool,
    /// Allow symlinks (and `..` through them) to resolve outside the root (default `false`).
    pub follow_symlinks_outside_root: bool,
    /// Serve dot-files and dot-directories (default `false`; `.well-known` is always served).
    pub hidden_files: bool,
    /// How long a small file (≤ [`SMALL_FILE_MAX`]) may be answered from memory before the file
    /// system is asked again (default 1 s, like nginx's `open_file_cache_valid`; zero disables
    /// the cache). Changes on disk become visible within this time.
    pub cache_validity: Duration,
}

impl StaticConfig {
    /// A configuration for `root` with all other fields at their defaults.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StaticConfig {
            root: root.into(),
            index: vec!["index.html".to_owned()],
            browse: false,
            precompressed: true,
            follow_symlinks_outside_root: false,
            hidden_files: false,
            cache_validity: Duration::from_secs(1),
        }
    }
}

/// A static file handler: the open document root plus its configuration.
#[derive(Debug)]
pub struct StaticFiles {
    /// The document root, opened once; all lookups are relative to it.
    root: OwnedFd,
    /// Canonical path of the root, used only by the pre-`openat2` fallback.
    canonical_root: PathBuf,
    cfg: StaticConfig,
    /// Set once `openat2` has returned `ENOSYS`.
    openat2_unsupported: AtomicBool,
    /// Identifies this handler in the per-thread small-file cache.
    id: u64,
    /// The site's headers, added to every response this handler makes unless the response
    /// already has the header (see [`StaticFiles::with_site_headers`]).
    site_headers: Vec<(HeaderName, HeaderValue)>,
}

impl StaticFiles {
    /// Opens the document root once. Errors are plain [`io::Error`]s (the caller adds file and
    /// line context): the root is missing or not a directory, or an index name is unusable
    /// (empty, `.`, `..`, or containing `/` or NUL).
    pub fn new(cfg: StaticConfig) -> io::Result<Self> {
        for name in &cfg.index {
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid index file name {name:?}: must be a plain file name"),
                ));
            }
        }
        let root = rustix::fs::open(
            &cfg.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let canonical_root = std::fs::canonicalize(&cfg.root)?;
        Ok(StaticFiles {
            root,
            canonical_root,
            cfg,
            openat2_unsupported: AtomicBool::new(false),
            id: NEXT_HANDLER_ID.fetch_add(1, Ordering::Relaxed),
            site_headers: Vec::new(),
        })
    }

    /// Adds the site's `headers` to every response (a header the response already has wins).
    /// Cached files keep them in a ready header map per representation, so the common answer,
    /// a whole small file with no conditions, costs one map clone instead of a dozen inserts.
    pub fn with_site_headers(mut self, headers: Vec<(HeaderName, HeaderValue)>) -> Self {
        self.site_headers = headers;
        self
    }

    /// Resolves every path from now on as on a kernel without `openat2` (the canonicalize-based
    /// confinement), so that the fuzz harness (`crate::fuzzing`) checks both resolutions.
    #[doc(hidden)]
    pub fn force_fallback_resolution(&self) {
        self.openat2_unsupported.store(true, Ordering::Relaxed);
    }

    /// Serves a request.
    ///
    /// `path` is the raw (still percent-encoded) URL path to look up, starting with `/`,
    /// already stripped of any route prefix by the caller; `req` supplies the method, the
    /// headers and (for directory redirects) the full URI. Never panics; every failure is
    /// mapped to an HTTP error response. Every response carries the site headers.
    pub fn serve(&self, req: &http::request::Parts, path: &str) -> Response<Body> {
        let (mut resp, headed) = self.serve_inner(req, path);
        if !headed {
            add_missing(resp.headers_mut(), &self.site_headers);
        }
        resp
    }

    /// [`StaticFiles::serve`] without the site headers, unless the response came whole from a
    /// cached header map (`true`), which has them.
    fn serve_inner(&self, req: &http::request::Parts, path: &str) -> (Response<Body>, bool) {
        let head = req.method == Method::HEAD;
        if req.method != Method::GET && !head {
            let mut resp = error_response(StatusCode::METHOD_NOT_ALLOWED, false);
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return (resp, false);
        }
        let cache_now = if self.cfg.cache_validity.is_zero() {
            None
        } else {
            let now = crate::clock::coarse_ms();
            if let Some(hit) = cache::get(self.id, path, now, self.cfg.cache_validity) {
                return self.serve_cached(req, &hit, head);
            }
            Some(now)
        };
        let target = match parse_path(path, self.cfg.hidden_files) {
            Ok(target) => target,
            Err(status) => {
                crate::limited!(REJECTED, debug, path, %status, "static: rejected request path");
                return (error_response(status, head), false);
            }
        };
        let (fd, st) = match self.open_rel(&target.rel) {
            Ok(opened) => opened,
            Err(err) => return (open_failed(err, path, head), false),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => self.serve_dir(req, path, &target, fd, head, cache_now),
            FileType::RegularFile if !target.trailing_slash => {
                self.serve_file(req, &target.rel, fd, &st, head, (path, cache_now))
            }
            _ => (error_response(StatusCode::NOT_FOUND, head), false),
        }
    }

    /// Opens `rel` (relative to the root, already validated) without escaping the root, and
    /// `fstat`s it.
    fn open_rel(&self, rel: &str) -> Result<(OwnedFd, Stat), Errno> {
        let fd = self.open_fd(rel)?;
        let st = rustix::fs::fstat(&fd)?;
        Ok((fd, st))
    }

    fn open_fd(&self, rel: &str) -> Result<OwnedFd, Errno> {
        if self.cfg.follow_symlinks_outside_root {
            return rustix::fs::openat(&self.root, rel, OPEN_FLAGS, Mode::empty());
        }
        if !self.openat2_unsupported.load(Ordering::Relaxed) {
            let mut attempts = 0;
            loop {
                match rustix::fs::openat2(
                    &self.root,
                    rel,
                    OPEN_FLAGS,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
                ) {
                    Err(Errno::AGAIN) if attempts < OPENAT2_RETRIES => attempts += 1,
                    Err(Errno::NOSYS) => {
                        tracing::warn!(
                            "static: openat2 unsupported by this kernel, \
                             falling back to canonicalize-based root confinement"
                        );
                        self.openat2_unsupported.store(true, Ordering::Relaxed);
                        break;
                    }
                    other => return other,
                }
            }
        }
        self.open_fallback(rel)
    }

    /// Root confinement without `openat2`: canonicalize, check the prefix, then open the
    /// canonical remainder relative to the root fd with `O_NOFOLLOW`.
    fn open_fallback(&self, rel: &str) -> Result<OwnedFd, Errno> {
        let canonical = std::fs::canonicalize(self.canonical_root.join(rel))
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::NOENT))?;
        let inner = canonical
            .strip_prefix(&self.canonical_root)
            .map_err(|_| Errno::XDEV)?;
        let inner: &Path = if inner.as_os_str().is_empty() {
            Path::new(".")
        } else {
            inner
        };
        rustix::fs::openat(
            &self.root,
            inner,
            OPEN_FLAGS | OFlags::NOFOLLOW,
            Mode::empty(),
        )
    }

    fn serve_dir(
        &self,
        req: &http::request::Parts,
        path: &str,
        target: &Target,
        dir: OwnedFd,
        head: bool,
        cache_now: Option<u64>,
    ) -> (Response<Body>, bool) {
        if !target.trailing_slash {
            return (redirect_with_slash(req, path, head), false);
        }
        for name in &self.cfg.index {
            let rel = join_rel(&target.rel, name);
            if let Ok((fd, st)) = self.open_rel(&rel) {
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
                    return self.serve_file(req, &rel, fd, &st, head, (path, cache_now));
                }
            }
        }
        let resp = if self.cfg.browse {
            self.listing(target, dir, head)
        } else {
            error_response(StatusCode::NOT_FOUND, head)
        };
        (resp, false)
    }

    /// Opens `<rel><suffix>` if it is a regular file.
    fn open_sibling(&self, rel: &str, enc: Encoding) -> Option<(OwnedFd, Stat)> {
        let (fd, st) = self.open_rel(&format!("{rel}{}", enc.file_suffix())).ok()?;
        (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then_some((fd, st))
    }

    /// Chooses between the file itself and its precompressed siblings. The flag is true when
    /// any sibling exists, i.e. when the response must carry `Vary: Accept-Encoding`.
    fn select_variant(
        &self,
        headers: &HeaderMap,
        rel: &str,
        fd: OwnedFd,
        st: &Stat,
    ) -> (Variant, bool) {
        let identity = Variant {
            fd,
            meta: FileMeta::from_stat(st),
            encoding: None,
        };
        if !self.cfg.precompressed {
            return (identity, false);
        }
        let br = self.open_sibling(rel, Encoding::Br);
        let gz = self.open_sibling(rel, Encoding::Gzip);
        if br.is_none() && gz.is_none() {
            return (identity, false);
        }
        let pick = AcceptEncoding::parse(headers).choose(br.is_some(), gz.is_some());
        let sibling = match pick {
            Some(Encoding::Br) => br.map(|s| (s, Encoding::Br)),
            Some(Encoding::Gzip) => gz.map(|s| (s, Encoding::Gzip)),
            None => None,
        };
        let variant = match sibling {
            Some(((fd, st), encoding)) => Variant {
                fd,
                meta: FileMeta::from_stat(&st),
                encoding: Some(encoding),
            },
            None => identity,
        };
        (variant, true)
    }

    /// Serves the regular file `rel` (already open as `fd`, with metadata `st`), or one of its
    /// precompressed siblings. `cache` is the request path (the cache key) and the time of the
    /// cache miss, when the small-file cache is on.
    fn serve_file(
        &self,
        req: &http::request::Parts,
        rel: &str,
        fd: OwnedFd,
        st: &Stat,
        head: bool,
        cache: (&str, Option<u64>),
    ) -> (Response<Body>, bool) {
        if let (key, Some(now)) = cache {
            if u64::try_from(st.st_size).is_ok_and(|n| n <= SMALL_FILE_MAX) {
                // None: a sibling is large, or a read failed: serve from the file below.
                if let Some(entry) = self.load_cached(rel, &fd, st, now) {
                    let entry = cache::insert(self.id, key, entry);
                    return self.serve_cached(req, &entry, head);
                }
            }
        }
        let (variant, vary) = self.select_variant(&req.headers, rel, fd, st);
        let Variant { fd, meta, encoding } = variant;
        let validators = Validators::new(&meta, encoding);
        let resp = self.respond(
            req,
            content_type_for(rel),
            Src::Fd(fd),
            meta,
            encoding,
            &validators,
            vary,
            head,
        );
        (resp, false)
    }

    /// Reads `rel` and its precompressed siblings into memory, for the cache. `None` when one of
    /// them is too large or cannot be read (the caller then serves from the file).
    fn load_cached(&self, rel: &str, fd: &OwnedFd, st: &Stat, now: u64) -> Option<cache::Entry> {
        type Loaded = (Vec<u8>, FileMeta, Option<Encoding>);
        let load = |fd: &OwnedFd, st: &Stat, encoding: Option<Encoding>| -> Option<Loaded> {
            let meta = FileMeta::from_stat(st);
            if meta.size > SMALL_FILE_MAX {
                return None;
            }
            let data = pread_up_to(fd, 0, usize::try_from(meta.size).ok()?).ok()?;
            if data.len() as u64 != meta.size {
                return None;
            }
            Some((data, meta, encoding))
        };
        let identity = load(fd, st, None)?;
        let (mut br, mut gz) = (None, None);
        if self.cfg.precompressed {
            if let Some((fd, st)) = self.open_sibling(rel, Encoding::Br) {
                br = Some(load(&fd, &st, Some(Encoding::Br))?);
            }
            if let Some((fd, st)) = self.open_sibling(rel, Encoding::Gzip) {
                gz = Some(load(&fd, &st, Some(Encoding::Gzip))?);
            }
        }
        let content_type = content_type_for(rel);
        let vary = br.is_some() || gz.is_some();
        let cached = |(data, meta, encoding): Loaded| {
            let validators = Validators::new(&meta, encoding);
            let mut whole = HeaderMap::with_capacity(9 + self.site_headers.len());
            // First, so that each response updates it without a lookup (`serve_cached`).
            whole.insert(http::header::DATE, crate::http::date::now());
            whole_file_headers(
                &mut whole,
                content_type.clone(),
                meta.size,
                encoding,
                &validators,
                vary,
            );
            add_missing(&mut whole, &self.site_headers);
            cache::Cached {
                data: Bytes::from(data),
                meta,
                validators,
                ready_h2: !whole.keys().any(crate::http::is_connection_specific),
                whole: Arc::new(whole),
            }
        };
        Some(cache::Entry {
            identity: cached(identity),
            br: br.map(cached),
            gz: gz.map(cached),
            content_type,
            loaded: now,
        })
    }

    /// Serves a cached small file (and its siblings) from memory.
    fn serve_cached(
        &self,
        req: &http::request::Parts,
        entry: &cache::Entry,
        head: bool,
    ) -> (Response<Body>, bool) {
        let vary = entry.br.is_some() || entry.gz.is_some();
        let (chosen, encoding) = if vary {
            match AcceptEncoding::parse(&req.headers).choose(entry.br.is_some(), entry.gz.is_some())
            {
                Some(Encoding::Br) => (
                    entry.br.as_ref().unwrap_or(&entry.identity),
                    Some(Encoding::Br),
                ),
                Some(Encoding::Gzip) => (
                    entry.gz.as_ref().unwrap_or(&entry.identity),
                    Some(Encoding::Gzip),
                ),
                None => (&entry.identity, None),
            }
        } else {
            (&entry.identity, None)
        };
        if !conditional_or_range(&req.headers) {
            // The whole representation, 200: its header map is ready (site headers included).
            let data = (!head && !chosen.data.is_empty()).then(|| chosen.data.clone());
            if req.version == http::Version::HTTP_2 && chosen.ready_h2 {
                // Shared with HTTP/2's encoder, which puts the current date in.
                return (Response::new(Body::Ready(data, chosen.whole.clone())), true);
            }
            let mut resp = Response::new(data.map_or(Body::Empty, Body::full));
            *resp.headers_mut() = HeaderMap::clone(&chosen.whole);
            if let Some((name, date)) = resp.headers_mut().iter_mut().next() {
                if name == http::header::DATE {
                    *date = crate::http::date::now();
                }
            }
            return (resp, true);
        }
        let src = Src::Mem(chosen.data.clone());
        let resp = self.respond(
            req,
            entry.content_type.clone(),
            src,
            chosen.meta,
            encoding,
            &chosen.validators,
            vary,
            head,
        );
        (resp, false)
    }

    /// Preconditions, ranges and headers for the chosen representation.
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        req: &http::request::Parts,
        content_type: HeaderValue,
        src: Src,
        meta: FileMeta,
        encoding: Option<Encoding>,
        validators: &Validators,
        vary: bool,
        head: bool,
    ) -> Response<Body> {
        let etag = validators.etag.to_str().unwrap_or("");
        let mut resp = match preconditions(&req.headers, etag, meta.mtime) {
            Precondition::Failed => return error_response(StatusCode::PRECONDITION_FAILED, head),
            Precondition::NotModified => {
                let mut resp = Response::new(Body::Empty);
                *resp.status_mut() = StatusCode::NOT_MODIFIED;
                resp
            }
            Precondition::Proceed => {
                let range = if req.method == Method::GET {
                    requested_range(&req.headers, etag, meta.mtime, meta.size)
                } else {
                    RangeRequest::Full
                };
                let (status, start, len) = match range {
                    RangeRequest::Full => (StatusCode::OK, 0, meta.size),
                    RangeRequest::Partial { start, end } => {
                        (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
                    }
                    RangeRequest::Unsatisfiable => {
                        let mut resp = error_response(StatusCode::RANGE_NOT_SATISFIABLE, head);
                        let unsatisfied = format!("bytes */{}", meta.size);
                        set_header(resp.headers_mut(), header::CONTENT_RANGE, &unsatisfied);
                        return resp;
                    }
                };
                let body = match src {
                    Src::Mem(data) if head || len == 0 => {
                        drop(data);
                        Body::Empty
                    }
                    // Ranges were checked against this size: the slice is in bounds.
                    Src::Mem(data) => {
                        Body::full(data.slice(start as usize..(start + len) as usize))
                    }
                    Src::Fd(fd) => match file_body(fd, start, len, head) {
                        Ok(body) => body,
                        Err(err) => {
                            tracing::warn!(error = %err, "static: reading file failed");
                            return error_response(StatusCode::INTERNAL_SERVER_ERROR, head);
                        }
                    },
                };
                let mut resp = Response::new(body);
                *resp.status_mut() = status;
                let h = resp.headers_mut();
                whole_file_headers(h, content_type, len, encoding, validators, vary);
                if status == StatusCode::PARTIAL_CONTENT {
                    let range = format!("bytes {start}-{}/{}", start + len - 1, meta.size);
                    set_header(h, header::CONTENT_RANGE, &range);
                }
                return resp;
            }
        };
        // Validators (and Vary) go on 200, 206 and 304 alike.
        validator_headers(resp.headers_mut(), validators, vary);
        resp
    }

    /// Renders an HTML listing of the directory `dir`.
    fn listing(&self, target: &Target, dir: OwnedFd, head: bool) -> Response<Body> {
        let mut dir = match Dir::new(dir) {
            Ok(dir) => dir,
            Err(err) => {
                tracing::warn!(rel = target.rel, error = %err, "static: cannot list directory");
                return error_response(StatusCode::INTERNAL_SERVER_ERROR, head);
            }
        };
        let mut entries: Vec<(String, bool)> = Vec::new();
        let mut truncated = false;
        while let Some(entry) = dir.read() {
            let Ok(entry) = entry else { break };
            // Names that are not UTF-8 cannot be requested (paths must decode to UTF-8).
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            if name.starts_with('.') && !self.cfg.hidden_files && name != ".well-known" {
                continue;
            }
            if entries.len() >= MAX_LISTING_ENTRIES {
                truncated = true;
                break;
            }
            let is_dir = match entry.file_type() {
                FileType::Directory => true,
                // Resolve links (and unknown d_type) with the same confinement as a request.
                FileType::Symlink | FileType::Unknown => self
                    .open_rel(&join_rel(&target.rel, name))
                    .is_ok_and(|(_, st)| {
                        FileType::from_raw_mode(st.st_mode) == FileType::Directory
                    }),
                _ => false,
            };
            entries.push((name.to_owned(), is_dir));
        }
        entries.sort();

        let title = html_escape(&target.display);
        let mut html = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title>\
             </head>\n<body>\n<h1>Index of {title}</h1>\n<ul>\n"
        );
        if target.rel != "." {
            html.push_str("<li><a href=\"../\">../</a></li>\n");
        }
        for (name, is_dir) in &entries {
            let slash = if *is_dir { "/" } else { "" };
            let href = utf8_percent_encode(name, HREF_ENCODE);
            let text = html_escape(name);
            html.push_str(&format!(
                "<li><a href=\"./{href}{slash}\">{text}{slash}</a></li>\n"
            ));
        }
        html.push_str("</ul>\n");
        if truncated {
            html.push_str(&format!(
                "<p>Listing truncated to {MAX_LISTING_ENTRIES} entries.</p>\n"
            ));
        }
        html.push_str("</body></html>\n");

        let len = html.len() as u64;
        let mut resp = Response::new(if head { Body::Empty } else { Body::full(html) });
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming body
// ---------------------------------------------------------------------------------------------

/// A byte range of an open file, read in chunks of at most [`CHUNK_SIZE`] bytes.
///
/// Each [`poll_chunk`](FileStream::poll_chunk) performs one blocking `pread` on the calling
/// thread (see the module docs) and is always `Ready`.
#[derive(Debug)]
pub struct FileStream {
    fd: OwnedFd,
    offset: u64,
    remaining: u64,
}

impl FileStream {
    /// Reads the next chunk: `None` once the range is exhausted. If the file shrank while being
    /// served, yields an `UnexpectedEof` error and then ends.
    pub fn poll_chunk(&mut self, _cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(self.remaining).map_or(CHUNK_SIZE, |r| r.min(CHUNK_SIZE));
        match pread_up_to(&self.fd, self.offset, want) {
            Ok(buf) if buf.is_empty() => {
                self.remaining = 0;
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being served",
                ))))
            }
            Ok(buf) => {
                let n = buf.len() as u64;
                self.offset += n;
                self.remaining -= n;
                Poll::Ready(Some(Ok(Bytes::from(buf))))
            }
            Err(err) => {
                self.remaining = 0;
                Poll::Ready(Some(Err(err)))
            }
        }
    }

    /// Bytes not yet returned by [`poll_chunk`](FileStream::poll_chunk).
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

/// Reads up to `len` bytes at `offset`, stopping early only at end of file.
///
/// The bytes go straight into the vector's spare capacity: zeroing a 128 KiB chunk first cost
/// 2 % of a bulk transfer's CPU.
fn pread_up_to(fd: &OwnedFd, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        match rustix::io::pread(fd, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    buf.truncate(len); // `with_capacity` may give more room than asked for
    Ok(buf)
}

/// The body for `len` bytes of `fd` starting at `start`: empty for HEAD, in memory when small,
/// streamed otherwise.
fn file_body(fd: OwnedFd, start: u64, len: u64, head: bool) -> io::Result<Body> {
    if head || len == 0 {
        return Ok(Body::Empty);
    }
    if len <= SMALL_FILE_MAX {
        let want = usize::try_from(len).map_err(io::Error::other)?;
        let buf = pread_up_to(&fd, start, want)?;
        if buf.len() != want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being served",
            ));
        }
        return Ok(Body::full(buf));
    }
    Ok(Body::File(FileStream {
        fd,
        offset: start,
        remaining: len,
    }))
}

// ---------------------------------------------------------------------------------------------
// Request path validation
// ---------------------------------------------------------------------------------------------

/// A validated request path.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// Path relative to the root (segments joined by `/`), `"."` for the root itself.
    rel: String,
    /// The decoded URL path (for listing titles).
    display: String,
    /// Whether the URL path ends with `/`.
    trailing_slash: bool,
}

/// Validates and decodes a raw URL path. `Err` carries the status to answer with.
fn parse_path(raw: &str, hidden_files: bool) -> Result<Target, StatusCode> {
    if !raw.starts_with('/') || raw.bytes().any(|b| b == b'\\' || b == 0) {
        return Err(StatusCode::BAD_REQUEST);
    }
    let decoded = percent_decode_strict(raw.as_bytes()).ok_or(StatusCode::BAD_REQUEST)?;
    if decoded.iter().any(|&b| b == b'\\' || b == 0) {
        return Err(StatusCode::BAD_REQUEST);
    }
    // Overlong or otherwise invalid UTF-8 (e.g. %c0%ae) is refused outright.
    let decoded = String::from_utf8(decoded).map_err(|_| StatusCode::BAD_REQUEST)?;
    let segments: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(StatusCode::BAD_REQUEST);
    }
    if !hidden_files
        && segments
            .iter()
            .any(|s| s.starts_with('.') && *s != ".well-known")
    {
        return Err(StatusCode::NOT_FOUND);
    }
    let rel = if segments.is_empty() {
        ".".to_owned()
    } else {
        segments.join("/")
    };
    Ok(Target {
        rel,
        trailing_slash: decoded.ends_with('/'),
        display: decoded,
    })
}

/// Percent-decodes `input`, returning `None` on any malformed escape (`%`, `%z1`, ...).
fn percent_decode_strict(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut bytes = input.iter();
    while let Some(&b) = bytes.next() {
        if b == b'%' {
            let hi = bytes.next().and_then(|&c| hex_value(c))?;
            let lo = bytes.next().and_then(|&c| hex_value(c))?;
            out.push((hi << 4) | lo);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir == "." {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata, validators, preconditions
// ---------------------------------------------------------------------------------------------

/// The headers of a 200 (or, with `len` the range's, 206) answer from a file: type, length,
/// ranges, coding, then the validators.
fn whole_file_headers(
    h: &mut HeaderMap,
    content_type: HeaderValue,
    len: u64,
    encoding: Option<Encoding>,
    validators: &Validators,
    vary: bool,
) {
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(enc) = encoding {
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(enc.token()),
        );
    }
    validator_headers(h, validators, vary);
}

/// `ETag`, `Last-Modified` and, when the file has precompressed siblings, `Vary`.
fn validator_headers(h: &mut HeaderMap, validators: &Validators, vary: bool) {
    h.insert(header::ETAG, validators.etag.clone());
    h.insert(header::LAST_MODIFIED, validators.last_modified.clone());
    if vary {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// Whether the request has a precondition or a range, i.e. may get something other than the
/// whole representation with 200. One pass over the request's names, no hashing.
fn conditional_or_range(headers: &HeaderMap) -> bool {
    headers.keys().any(|n| {
        *n == header::IF_MATCH
            || *n == header::IF_NONE_MATCH
            || *n == header::IF_MODIFIED_SINCE
            || *n == header::IF_UNMODIFIED_SINCE
            || *n == header::RANGE
    })
}

/// Where a response's bytes come from.
enum Src {
    Fd(OwnedFd),
    Mem(Bytes),
}

/// `ETag` and `Last-Modified`, formatted once.
#[derive(Debug, Clone)]
struct Validators {
    etag: HeaderValue,
    last_modified: HeaderValue,
}

impl Validators {
    fn new(meta: &FileMeta, encoding: Option<Encoding>) -> Self {
        let hv = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
        Validators {
            etag: hv(meta.etag(encoding)),
            last_modified: hv(meta.last_modified()),
        }
    }
}

static NEXT_HANDLER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The small-file cache: per worker thread (no locks, no cache lines shared between cores),
/// keyed by handler and raw request path, bounded in entries and bytes. An entry is trusted for
/// [`StaticConfig::cache_validity`] and then looked up on disk again.
mod cache {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::hash::{BuildHasherDefault, Hasher};
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue};

    use super::{FileMeta, Validators};

    /// Most entries per thread.
    const MAX_ENTRIES: usize = 4096;
    /// Most cached bytes per thread.
    const MAX_BYTES: usize = 16 * 1024 * 1024;

    /// One representation in memory.
    pub(super) struct Cached {
        pub data: Bytes,
        pub meta: FileMeta,
        pub validators: Validators,
        /// The headers of the whole representation with 200, site headers included, `Date`
        /// first (shared with HTTP/2 responses: see [`crate::http::Body::Ready`]).
        pub whole: Arc<HeaderMap>,
        /// `whole` has no field HTTP/2 forbids (a site header such as `connection`): it can be
        /// sent as it is over HTTP/2.
        pub ready_h2: bool,
    }

    /// A file and its precompressed siblings.
    pub(super) struct Entry {
        pub content_type: HeaderValue,
        pub identity: Cached,
        pub br: Option<Cached>,
        pub gz: Option<Cached>,
        /// When it was read ([`crate::clock::coarse_ms`]).
        pub loaded: u64,
    }

    impl Entry {
        fn bytes(&self) -> usize {
            self.identity.data.len()
                + self.br.as_ref().map_or(0, |c| c.data.len())
                + self.gz.as_ref().map_or(0, |c| c.data.len())
        }
    }

    #[derive(Default)]
    struct Cache {
        /// Handler id → request path → entry (two levels so lookups borrow the path).
        map: HashMap<u64, HashMap<Box<str>, Rc<Entry>>, BuildHasherDefault<IdHasher>>,
        entries: usize,
        bytes: usize,
    }

    thread_local! {
        static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    }

    /// Handler ids are our own counter (not chosen by clients): they are their own hash. A
    /// SipHash of the id was half of the lookup's cost per request (hand-rolled: a std
    /// `Hasher` that keeps the one `u64` it is given).
    #[derive(Default)]
    struct IdHasher(u64);

    impl Hasher for IdHasher {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(*b);
            }
        }
        fn write_u64(&mut self, n: u64) {
            // hashbrown takes the top 7 bits as a tag: spread the id over them too.
            self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    /// A fresh entry for `path` of handler `id`.
    pub(super) fn get(id: u64, path: &str, now: u64, validity: Duration) -> Option<Rc<Entry>> {
        CACHE.with(|c| {
            let c = c.borrow();
            let e = c.map.get(&id)?.get(path)?;
            (u128::from(now.saturating_sub(e.loaded)) < validity.as_millis()).then(|| e.clone())
        })
    }

    /// Stores `entry` (evicting everything when a bound is reached) and returns it shared.
    pub(super) fn insert(id: u64, path: &str, entry: Entry) -> Rc<Entry> {
        let entry = Rc::new(entry);
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            let size = entry.bytes();
            if c.entries >= MAX_ENTRIES || c.bytes + size > MAX_BYTES {
                c.map.clear();
                c.entries = 0;
                c.bytes = 0;
            }
            match c
                .map
                .entry(id)
                .or_default()
                .insert(Box::from(path), entry.clone())
            {
                Some(old) => c.bytes -= old.bytes(),
                None => c.entries += 1,
            }
            c.bytes += size;
        });
        entry
    }
}

/// The representation chosen for a response: a file and, for a precompressed sibling, its
/// content coding.
struct Variant {
    fd: OwnedFd,
    meta: FileMeta,
    encoding: Option<Encoding>,
}

/// The parts of `stat` that go into validators.
#[derive(Debug, Clone, Copy)]
struct FileMeta {
    size: u64,
    /// Modification time in whole seconds since the epoch, clamped to the HTTP date range.
    mtime: u64,
}

impl FileMeta {
    fn from_stat(st: &Stat) -> Self {
        FileMeta {
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: clamp_mtime(st.st_mtime),
        }
    }

    /// Strong ETag `"<mtime hex>-<size hex>[-br|-gz]"`.
    fn etag(&self, encoding: Option<Encoding>) -> String {
        let suffix = encoding.map_or("", Encoding::etag_suffix);
        format!("\"{:x}-{:x}{suffix}\"", self.mtime, self.size)
    }

    fn last_modified(&self) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(self.mtime))
    }
}

/// Seconds since the epoch as a representable HTTP date: negative times become the epoch,
/// times after 9999-12-31 become that day's last second.
/// (Generic because the width of `st_mtime` differs between architectures.)
fn clamp_mtime(secs: impl TryInto<u64>) -> u64 {
    secs.try_into().unwrap_or(0).min(MAX_HTTP_DATE_SECS)
}

#[derive(Debug, PartialEq, Eq)]
enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

/// Evaluates conditional headers in the order of RFC 9110 §13.2.2 (GET/HEAD only).
fn preconditions(headers: &HeaderMap, etag: &str, mtime: u64) -> Precondition {
    if headers.contains_key(header::IF_MATCH) {
        if !etag_list_matches(headers, header::IF_MATCH, etag, true) {
            return Precondition::Failed;
        }
    } else if let Some(date) = header_date(headers, &header::IF_UNMODIFIED_SINCE) {
        if mtime > date {
            return Precondition::Failed;
        }
    }
    if headers.contains_key(header::IF_NONE_MATCH) {
        if etag_list_matches(headers, header::IF_NONE_MATCH, etag, false) {
            return Precondition::NotModified;
        }
    } else if let Some(date) = header_date(headers, &header::IF_MODIFIED_SINCE) {
        if mtime <= date {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

/// Whether any value of header `name` (`*` or a list of entity tags) matches `ours`.
/// `strong` selects strong comparison (a `W/` tag never matches); otherwise weak comparison.
fn etag_list_matches(headers: &HeaderMap, name: HeaderName, ours: &str, strong: bool) -> bool {
    headers.get_all(name).iter().any(|value| {
        let Ok(value) = value.to_str() else {
            return false;
        };
        if value.trim() == "*" {
            return true;
        }
        EntityTags(value).any(|(weak, tag)| tag == ours && !(strong && weak))
    })
}

/// Iterator over `(weak, "opaque")` entity tags of a comma-separated list; ends (without
/// yielding the element at hand) as soon as the list turns out to be malformed.
struct EntityTags<'a>(&'a str);

impl<'a> Iterator for EntityTags<'a> {
    type Item = (bool, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.0.trim_start_matches([' ', '\t', ',']);
        let (weak, rest) = match rest.strip_prefix("W/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let after_quote = rest.strip_prefix('"')?;
        let close = after_quote.find('"')?;
        let tag = &rest[..close + 2];
        let tail = &after_quote[close + 1..];
        // Only whitespace may separate a tag from the next comma.
        let tail_trimmed = tail.trim_start_matches([' ', '\t']);
        if !(tail_trimmed.is_empty() || tail_trimmed.starts_with(',')) {
            self.0 = "";
            return None;
        }
        self.0 = tail_trimmed;
        Some((weak, tag))
    }
}

/// The first value of a date header, in seconds since the epoch; `None` if absent or invalid.
fn header_date(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    let value = headers.get(name)?.to_str().ok()?;
    parse_date(value)
}

fn parse_date(value: &str) -> Option<u64> {
    let time = httpdate::parse_http_date(value.trim()).ok()?;
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// Range
// ---------------------------------------------------------------------------------------------

/// Outcome of evaluating `Range` (and `If-Range`) against a representation.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// Send the whole representation (no, invalid, multi or non-applicable range).
    Full,
    /// Send bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// The single range lies entirely outside the representation.
    Unsatisfiable,
}

fn requested_range(headers: &HeaderMap, etag: &str, mtime: u64, size: u64) -> RangeRequest {
    let mut values = headers.get_all(header::RANGE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return RangeRequest::Full;
    };
    let Ok(value) = value.to_str() else {
        return RangeRequest::Full;
    };
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        let Ok(if_range) = if_range.to_str() else {
            return RangeRequest::Full;
        };
        let if_range = if_range.trim();
        let matches = if if_range.starts_with('"') || if_range.starts_with("W/") {
            // Strong comparison: weak tags never match.
            if_range == etag
        } else {
            parse_date(if_range) == Some(mtime)
        };
        if !matches {
            return RangeRequest::Full;
        }
    }
    parse_range(value, size)
}

/// Parses a `Range` header value for a representation of `size` bytes. Only a single
/// `bytes` range is supported; anything else (including syntax errors) means [`RangeRequest::Full`].
fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some((unit, spec)) = value.trim().split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let Some(suffix) = parse_digits(last) else {
            return RangeRequest::Full;
        };
        if suffix == 0 || size == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Partial {
            start: size.saturating_sub(suffix),
            end: size - 1,
        };
    }
    let Some(start) = parse_digits(first) else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match parse_digits(last) {
            Some(end) if end >= start => Some(end),
            _ => return RangeRequest::Full,
        }
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    let end = end.map_or(size - 1, |e| e.min(size - 1));
    RangeRequest::Partial { start, end }
}

/// A non-empty run of ASCII digits as `u64` (no signs, no overflow).
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Content negotiation
// ---------------------------------------------------------------------------------------------

/// A precompressed variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Br,
    Gzip,
}

impl Encoding {
    fn token(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }

    fn file_suffix(self) -> &'static str {
        match self {
            Encoding::Br => ".br",
            Encoding::Gzip => ".gz",
        }
    }

    fn etag_suffix(self) -> &'static str {
        match self {
            Encoding::Br => "-br",
            Encoding::Gzip => "-gz",
        }
    }
}

impl AcceptEncoding {
    /// Picks the variant to send among the existing ones: the acceptable (q > 0) coding with
    /// the highest q, `br` winning ties; `None` (identity) if none is acceptable or the client
    /// explicitly rates `identity` higher than the best coding.
    fn choose(&self, have_br: bool, have_gz: bool) -> Option<Encoding> {
        let br = if have_br { self.q("br") } else { 0 };
        let gz = if have_gz { self.q("gzip") } else { 0 };
        let (best, q) = if br >= gz {
            (Encoding::Br, br)
        } else {
            (Encoding::Gzip, gz)
        };
        if q == 0 {
            return None;
        }
        match self.explicit("identity") {
            Some(identity) if identity > q => None,
            _ => Some(best),
        }
    }
}

/// `Content-Type` for a path, by extension; text-like types get `charset=utf-8`.
fn content_type_for(rel: &str) -> HeaderValue {
    let mime = mime_guess::from_path(rel)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let charset = mime.starts_with("text/")
        || matches!(
            mime,
            "application/javascript" | "application/json" | "image/svg+xml"
        );
    let value = if charset {
        HeaderValue::from_str(&format!("{mime}; charset=utf-8"))
    } else {
        HeaderValue::from_str(mime)
    };
    value.unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// A short `text/plain` error page such as `404 Not Found\n` (empty body for HEAD, same
/// headers).
/// Budgets of the lines clients can cause by their requests (see [`crate::ops::limit`]).
static REJECTED: crate::ops::limit::LineLimit = crate::ops::limit::LineLimit::new(
    "static: rejected request path",
    crate::ops::limit::report_to_log,
);
static NOT_FOUND: crate::ops::limit::LineLimit =
    crate::ops::limit::LineLimit::new("static: not found", crate::ops::limit::report_to_log);

/// An error page (with the request id when the access log is on).
fn error_response(status: StatusCode, head: bool) -> Response<Body> {
    let mut text = format!(
        "{} {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("Error")
    );
    let id = super::pages::request_id_line(&mut text);
    let len = text.len() as u64;
    let mut resp = Response::new(if head { Body::Empty } else { Body::full(text) });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(id) = id {
        h.insert(super::proxy::headers::X_REQUEST_ID, id);
    }
    resp
}

/// Maps an open failure to a response: 404 for anything that means "not there / not for you"
/// (escape attempts are logged at debug), 500 for resource exhaustion and I/O errors.
fn open_failed(err: Errno, path: &str, head: bool) -> Response<Body> {
    match err {
        Errno::XDEV | Errno::LOOP => {
            crate::limited!(NOT_FOUND, debug, path, error = %err, "static: refused path resolving outside the root");
            error_response(StatusCode::NOT_FOUND, head)
        }
        Errno::MFILE | Errno::NFILE | Errno::NOMEM | Errno::IO => {
            tracing::warn!(path, error = %err, "static: cannot open file");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, head)
        }
        _ => {
            crate::limited!(NOT_FOUND, debug, path, error = %err, "static: not found");
            error_response(StatusCode::NOT_FOUND, head)
        }
    }
}

/// `301` to the requested URL path plus `/`, keeping the query string.
///
/// The path is taken from the request URI when it ends with `path` (so a route prefix the
/// caller stripped is kept), else from `path`. Leading slashes are collapsed to one, so
/// `//evil.example` can never become a protocol-relative redirect.
fn redirect_with_slash(req: &http::request::Parts, path: &str, head: bool) -> Response<Body> {
    let uri_path = req.uri.path();
    let base = if uri_path.ends_with(path) {
        uri_path
    } else {
        path
    };
    let mut location = String::with_capacity(base.len() + 2);
    location.push('/');
    location.push_str(base.trim_start_matches('/'));
    location.push('/');
    if let Some(query) = req.uri.query() {
        location.push('?');
        location.push_str(query);
    }
    let Ok(location) = HeaderValue::from_str(&location) else {
        return error_response(StatusCode::BAD_REQUEST, head);
    };
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    resp
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::pin::Pin;
    use std::task::Waker;

    use crate::http::compress::parse_qvalue;

    use http_body::Body as _;

    const OUTSIDE: &[u8] = b"TOP SECRET: this lives outside the document root\n";
    const A_TXT: &[u8] = b"0123456789abcdef";
    const INDEX: &[u8] = b"<h1>home</h1>\n";
    const MTIME: u64 = 1_700_000_000;

    struct Fixture {
        tmp: tempfile::TempDir,
        root: PathBuf,
    }

    fn set_mtime(path: &Path, secs: u64) {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(tmp.path().join("outside.txt"), OUTSIDE).unwrap();
        fs::write(root.join("index.html"), INDEX).unwrap();
        fs::write(root.join("a.txt"), A_TXT).unwrap();
        set_mtime(&root.join("a.txt"), MTIME);
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/b.txt"), b"bee\n").unwrap();
        fs::write(root.join(".secret"), b"secret\n").unwrap();
        fs::create_dir(root.join(".well-known")).unwrap();
        fs::write(root.join(".well-known/token.txt"), b"token\n").unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        symlink("../outside.txt", root.join("out")).unwrap();
        symlink("a.txt", root.join("inlink")).unwrap();
        symlink("..", root.join("updir")).unwrap();
        symlink(tmp.path().join("outside.txt"), root.join("abs")).unwrap();
        symlink("/proc/self/root/etc/passwd", root.join("magic")).unwrap();
        Fixture { tmp, root }
    }

    fn handler(fx: &Fixture, tweak: impl FnOnce(&mut StaticConfig)) -> StaticFiles {
        let mut cfg = StaticConfig::new(&fx.root);
        tweak(&mut cfg);
        StaticFiles::new(cfg).unwrap()
    }

    fn parts(method: &str, path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        // Nasty paths are not always valid URIs; the handler only uses the URI for redirects.
        let uri = path
            .parse::<http::Uri>()
            .unwrap_or_else(|_| http::Uri::from_static("/"));
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn request(
        sf: &StaticFiles,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response<Body> {
        sf.serve(&parts(method, path, headers), path)
    }

    fn get(sf: &StaticFiles, path: &str, headers: &[(&str, &str)]) -> Response<Body> {
        request(sf, "GET", path, headers)
    }

    fn collect(mut body: Body) -> Vec<u8> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    out.extend_from_slice(&frame.into_data().unwrap());
                }
                Poll::Ready(Some(Err(err))) => panic!("body error: {err}"),
                Poll::Ready(None) => return out,
                Poll::Pending => panic!("file bodies never return Pending"),
            }
        }
    }

    fn header<'a>(resp: &'a Response<Body>, name: &str) -> Option<&'a str> {
        resp.headers().get(name).map(|v| v.to_str().unwrap())
    }

    fn status_and_body(resp: Response<Body>) -> (StatusCode, Vec<u8>) {
        let status = resp.status();
        (status, collect(resp.into_body()))
    }

    // -----------------------------------------------------------------------------------------
    // Path safety
    // -----------------------------------------------------------------------------------------

    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;

    /// Paths that must never yield content from outside the root, with the exact status.
    const NASTY: &[(&str, StatusCode)] = &[
        ("/../outside.txt", BAD),
        ("/%2e%2e/outside.txt", BAD),
        ("/%2E%2E%2Foutside.txt", BAD),
        ("/..%2foutside.txt", BAD),
        ("/sub/../../outside.txt", BAD),
        ("/..\\outside.txt", BAD),
        ("/%5c..%5coutside.txt", BAD),
        ("/%2e%2e%5coutside.txt", BAD),
        ("/a.txt%00.html", BAD),
        ("/%00", BAD),
        ("/a.txt\0", BAD),
        ("//etc/passwd", NOT_FOUND),
        ("/%2fetc%2fpasswd", NOT_FOUND),
        ("/out", NOT_FOUND),
        ("/out/", NOT_FOUND),
        ("/updir/outside.txt", NOT_FOUND),
        ("/abs", NOT_FOUND),
        ("/magic", NOT_FOUND),
        ("/.secret", NOT_FOUND),
        ("/sub/../.secret", BAD),
        ("/sub/%2e%2e/%2e%2e/outside.txt", BAD),
        ("/.%2e/outside.txt", BAD),
        ("/%2e./outside.txt", BAD),
        ("/sub/%2E./outside.txt", BAD),
        ("/%252e%252e/outside.txt", NOT_FOUND),
        ("/..%252f..%252foutside.txt", NOT_FOUND),
        ("/%c0%ae%c0%ae/outside.txt", BAD),
        ("/..%c0%af../outside.txt", BAD),
        ("/%ef%bc%8e%ef%bc%8e/outside.txt", NOT_FOUND),
        ("/ /../outside.txt", BAD),
        ("/a.txt/", NOT_FOUND),
        ("/inlink/", NOT_FOUND),
        ("/sub/..", BAD),
        ("/sub/.", BAD),
        ("/./a.txt", BAD),
        ("/....//outside.txt", NOT_FOUND),
        ("/%", BAD),
        ("/%zz", BAD),
        ("/%2", BAD),
        ("/%u002e%u002e/outside.txt", BAD),
        ("/..;/outside.txt", NOT_FOUND),
        ("/proc/self/environ", NOT_FOUND),
        ("/etc/passwd", NOT_FOUND),
        ("/.well-known/../../outside.txt", BAD),
        ("/inlink/../../outside.txt", BAD),
        ("/sub/b.txt/../../../outside.txt", BAD),
        ("/a.txt%2500", NOT_FOUND),
        ("", BAD),
        ("outside.txt", BAD),
        ("../outside.txt", BAD),
    ];

    fn check_nasty(sf: &StaticFiles) {
        assert!(NASTY.len() >= 25);
        for &(path, expected) in NASTY {
            for method in ["GET", "HEAD"] {
                let (status, body) = status_and_body(request(sf, method, path, &[]));
                assert_eq!(status, expected, "{method} {path:?}");
                assert_ne!(body, OUTSIDE, "{method} {path:?} leaked the outside file");
                assert!(
                    !String::from_utf8_lossy(&body).contains("TOP SECRET"),
                    "{method} {path:?} leaked the outside file"
                );
                assert!(!body.starts_with(b"root:"), "{path:?} leaked /etc/passwd");
            }
        }
    }

    #[test]
    fn nasty_paths_never_escape_root() {
        let fx = fixture();
        check_nasty(&handler(&fx, |_| {}));
    }

    #[test]
    fn nasty_paths_never_escape_root_with_fallback_resolution() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        sf.openat2_unsupported.store(true, Ordering::Relaxed);
        check_nasty(&sf);
        // The fallback still serves in-root files and in-root symlinks.
        let (status, body) = status_and_body(get(&sf, "/inlink", &[]));
        assert_eq!((status, body.as_slice()), (StatusCode::OK, A_TXT));
        let (status, body) = status_and_body(get(&sf, "/sub/b.txt", &[]));
        assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"bee\n"[..]));
        assert_eq!(get(&sf, "/", &[]).status(), StatusCode::OK);
    }

    #[test]
    fn generated_paths_and_headers_never_panic_or_escape() {
        const PIECES: &[&str] = &[
            "/",
            "/",
            "..",
            ".",
            "%2e",
            "%2E",
            "%2f",
            "%2F",
            "%5c",
            "\\",
            "%00",
            "%",
            "%z",
            "%c0",
            "%ae",
            "out",
            "updir",
            "abs",
            "magic",
            "a.txt",
            "sub",
            "inlink",
            ".secret",
            "%25",
            "outside.txt",
            ";",
            " ",
            "?",
            "#",
            "\u{e9}",
            ".well-known",
        ];
        const VALUES: &[&str] = &[
            "bytes=0-4",
            "bytes=-0",
            "bytes=9999999999999999999-",
            "bytes=-",
            "bytes=1-0",
            "bytes=0-1,2-3",
            "*",
            "W/\"x\"",
            "\"",
            "W/",
            "",
            ",,,",
            "br;q=0.5, gzip;q=",
            "Tue, 14 Nov 2023 22:13:20 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "q=1;br",
        ];
        let fx = fixture();
        let sf = handler(&fx, |c| c.browse = true);
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % n
        };
        for _ in 0..3000 {
            let mut path = String::from("/");
            for _ in 0..next(7) {
                path.push_str(PIECES[next(PIECES.len())]);
            }
            let mut headers = Vec::new();
            for name in [
                "range",
                "if-range",
                "if-none-match",
                "if-match",
                "if-modified-since",
                "accept-encoding",
            ] {
                if next(3) == 0 {
                    headers.push((name, VALUES[next(VALUES.len())]));
                }
            }
            let method = ["GET", "HEAD"][next(2)];
            let resp = request(&sf, method, &path, &headers);
            let status = resp.status();
            let body = collect(resp.into_body());
            assert!(
                !String::from_utf8_lossy(&body).contains("TOP SECRET"),
                "{path:?} leaked the outside file ({status})"
            );
        }
    }

    #[test]
    fn symlink_inside_root_is_served() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        let (status, body) = status_and_body(get(&sf, "/inlink", &[]));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, A_TXT);
    }

    #[test]
    fn follow_symlinks_outside_root_when_enabled() {
        let fx = fixture();
        let sf = handler(&fx, |c| c.follow_symlinks_outside_root = true);
        let (status, body) = status_and_body(get(&sf, "/out", &[]));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, OUTSIDE);
        // Path validation still applies.
        assert_eq!(get(&sf, "/../outside.txt", &[]).status(), BAD);
    }

    #[test]
    fn hidden_files_and_well_known() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        let (status, body) = status_and_body(get(&sf, "/.well-known/token.txt", &[]));
        assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"token\n"[..]));
        assert_eq!(get(&sf, "/.secret", &[]).status(), NOT_FOUND);

        let sf = handler(&fx, |c| c.hidden_files = true);
        let (status, body) = status_and_body(get(&sf, "/.secret", &[]));
        assert_eq!(
            (status, body.as_slice()),
            (StatusCode::OK, &b"secret\n"[..])
        );
    }

    #[test]
    fn fifo_is_not_served_and_does_not_block() {
        let fx = fixture();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            fx.root.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let sf = handler(&fx, |_| {});
        assert_eq!(get(&sf, "/fifo", &[]).status(), NOT_FOUND);
    }

    #[test]
    fn parse_path_cases() {
        let t = parse_path("/sub/%62.txt", false).unwrap();
        assert_eq!(t.rel, "sub/b.txt");
        assert!(!t.trailing_slash);
        let t = parse_path("/", false).unwrap();
        assert_eq!((t.rel.as_str(), t.trailing_slash), (".", true));
        let t = parse_path("//sub//", false).unwrap();
        assert_eq!((t.rel.as_str(), t.trailing_slash), ("sub", true));
        let t = parse_path("/sub%2F", false).unwrap();
        assert_eq!((t.rel.as_str(), t.trailing_slash), ("sub", true));
        assert_eq!(parse_path("/.git/config", false), Err(NOT_FOUND));
        assert_eq!(parse_path("/.git/config", true).unwrap().rel, ".git/config");
        assert_eq!(parse_path("/.git/../x", true), Err(BAD));
        assert_eq!(percent_decode_strict(b"%41%7a%5A"), Some(b"AzZ".to_vec()));
        assert_eq!(percent_decode_strict(b"%4"), None);
        assert_eq!(percent_decode_strict(b"%G1"), None);
    }

    // -----------------------------------------------------------------------------------------
    // Construction, methods, directories
    // -----------------------------------------------------------------------------------------

    #[test]
    fn new_rejects_bad_roots_and_index_names() {
        let fx = fixture();
        assert!(StaticFiles::new(StaticConfig::new(fx.root.join("missing"))).is_err());
        assert!(StaticFiles::new(StaticConfig::new(fx.root.join("a.txt"))).is_err());
        for bad in ["", ".", "..", "a/b"] {
            let mut cfg = StaticConfig::new(&fx.root);
            cfg.index = vec![bad.to_owned()];
            assert!(StaticFiles::new(cfg).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn post_is_405_with_allow() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
            let resp = request(&sf, method, "/a.txt", &[]);
            assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(header(&resp, "allow"), Some("GET, HEAD"));
            assert_eq!(
                header(&resp, "content-type"),
                Some("text/plain; charset=utf-8")
            );
            let body = collect(resp.into_body());
            assert_eq!(body, b"405 Method Not Allowed\n");
        }
    }

    #[test]
    fn error_pages_are_short_text() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        let resp = get(&sf, "/nope.txt", &[]);
        assert_eq!(resp.status(), NOT_FOUND);
        assert_eq!(header(&resp, "content-length"), Some("14"));
        assert_eq!(collect(resp.into_body()), b"404 Not Found\n");
        let resp = get(&sf, "/%zz", &[]);
        assert_eq!(collect(resp.into_body()), b"400 Bad Request\n");
        // HEAD: same headers, no body.
        let resp = request(&sf, "HEAD", "/nope.txt", &[]);
        assert_eq!(header(&resp, "content-length"), Some("14"));
        assert!(collect(resp.into_body()).is_empty());
    }

    #[test]
    fn index_served_at_root() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        let resp = get(&sf, "/", &[]);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(&resp, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(collect(resp.into_body()), INDEX);
    }

    #[test]
    fn custom_index_list_in_subdirectory() {
        let fx = fixture();
        fs::write(fx.root.join("sub/default.htm"), b"default").unwrap();
        let sf = handler(&fx, |c| {
            c.index = vec!["index.html".into(), "default.htm".into()];
        });
        let (status, body) = status_and_body(get(&sf, "/sub/", &[]));
        assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"default"[..]));
    }

    #[test]
    fn directory_without_slash_redirects() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        let resp = get(&sf, "/sub", &[]);
        assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(header(&resp, "location"), Some("/sub/"));

        let resp = sf.serve(&parts("GET", "/sub?x=1&y=%20", &[]), "/sub");
        assert_eq!(header(&resp, "location"), Some("/sub/?x=1&y=%20"));

        // A route prefix stripped by the caller is kept in the redirect.
        let resp = sf.serve(&parts("GET", "/static/sub?q", &[]), "/sub");
        assert_eq!(header(&resp, "location"), Some("/static/sub/?q"));

        // "//host" must not turn into a protocol-relative redirect.
        fs::create_dir(fx.root.join("evil.example")).unwrap();
        let resp = get(&sf, "//evil.example", &[]);
        assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(header(&resp, "location"), Some("/evil.example/"));
    }

    #[test]
    fn directory_without_index_is_404_without_browse() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        assert_eq!(get(&sf, "/empty/", &[]).status(), NOT_FOUND);
        assert_eq!(get(&sf, "/sub/", &[]).status(), NOT_FOUND);
    }

    #[test]
    fn browse_lists_entries_escaped_and_sorted() {
        let fx = fixture();
        let dir = fx.root.join("sub");
        fs::write(dir.join("<b>&\"x'.txt"), b"x").unwrap();
        fs::write(dir.join("sp ace.txt"), b"x").unwrap();
        fs::write(dir.join(".hidden"), b"x").unwrap();
        fs::create_dir(dir.join("zdir")).unwrap();
        symlink("zdir", dir.join("linkdir")).unwrap();
        let sf = handler(&fx, |c| c.browse = true);

        let resp = get(&sf, "/sub/", &[]);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(&resp, "content-type"),
            Some("text/html; charset=utf-8")
        );
        let len: usize = header(&resp, "content-length").unwrap().parse().unwrap();
        let html = String::from_utf8(collect(resp.into_body())).unwrap();
        assert_eq!(html.len(), len);
        assert!(html.contains("<title>Index of /sub/</title>"));
        assert!(html.contains(r#"<a href="../">../</a>"#));
        assert!(html
            .contains(r#"<a href="./%3Cb%3E%26%22x%27.txt">&lt;b&gt;&amp;&quot;x&#39;.txt</a>"#));
        assert!(html.contains(r#"<a href="./sp%20ace.txt">sp ace.txt</a>"#));
        assert!(html.contains(r#"<a href="./zdir/">zdir/</a>"#));
        assert!(html.contains(r#"<a href="./linkdir/">linkdir/</a>"#));
        assert!(html.contains(r#"<a href="./b.txt">b.txt</a>"#));
        assert!(!html.contains("hidden"));
        assert!(!html.contains("<b>"));
        // Sorted by name.
        let pos = |needle: &str| html.find(needle).unwrap();
        assert!(pos("%3Cb%3E") < pos("b.txt"));
        assert!(pos("b.txt") < pos("linkdir"));
        assert!(pos("linkdir") < pos("sp%20ace"));
        assert!(pos("sp%20ace") < pos("zdir"));

        // Root listing has no parent link and omits dot-files (but shows .well-known).
        fs::remove_file(fx.root.join("index.html")).unwrap();
        let html = String::from_utf8(collect(get(&sf, "/", &[]).into_body())).unwrap();
        assert!(!html.contains("../"));
        assert!(!html.contains(".secret"));
        assert!(html.contains(r#"<a href="./.well-known/">.well-known/</a>"#));

        // HEAD: same length, no body.
        let resp = request(&sf, "HEAD", "/sub/", &[]);
        assert_eq!(
            header(&resp, "content-length"),
            Some(len.to_string().as_str())
        );
        assert!(collect(resp.into_body()).is_empty());

        // With hidden_files the dot-file is listed.
        let sf = handler(&fx, |c| {
            c.browse = true;
            c.hidden_files = true;
        });
        let html = String::from_utf8(collect(get(&sf, "/sub/", &[]).into_body())).unwrap();
        assert!(html.contains(r#"<a href="./.hidden">.hidden</a>"#));
    }

    // -----------------------------------------------------------------------------------------
    // Headers, validators, conditionals
    // -----------------------------------------------------------------------------------------

    fn a_txt_etag() -> String {
        format!("\"{:x}-{:x}\"", MTIME, A_TXT.len())
    }

    #[test]
    fn file_headers() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        let resp = get(&sf, "/a.txt", &[]);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(&resp, "content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(header(&resp, "content-length"), Some("16"));
        assert_eq!(header(&resp, "accept-ranges"), Some("bytes"));
        assert_eq!(header(&resp, "etag"), Some(a_txt_etag().as_str()));
        assert_eq!(
            header(&resp, "last-modified"),
            Some("Tue, 14 Nov 2023 22:13:20 GMT")
        );
        assert_eq!(header(&resp, "vary"), None);
        assert_eq!(header(&resp, "content-encoding"), None);
        assert_eq!(collect(resp.into_body()), A_TXT);
    }

    #[test]
    fn content_types() {
        let ct = |p: &str| content_type_for(p).to_str().unwrap().to_owned();
        assert_eq!(ct("x.html"), "text/html; charset=utf-8");
        assert_eq!(ct("x.json"), "application/json; charset=utf-8");
        assert_eq!(ct("x.svg"), "image/svg+xml; charset=utf-8");
        assert!(ct("x.js").ends_with("javascript; charset=utf-8"));
        assert_eq!(ct("x.png"), "image/png");
        assert_eq!(ct("noext"), "application/octet-stream");
        assert_eq!(ct("x.unknownext"), "application/octet-stream");
    }

    #[test]
    fn head_has_length_and_no_body() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        let get_resp = get(&sf, "/a.txt", &[]);
        let head_resp = request(&sf, "HEAD", "/a.txt", &[]);
        assert_eq!(head_resp.status(), StatusCode::OK);
        assert_eq!(head_resp.headers(), get_resp.headers());
        assert_eq!(header(&head_resp, "content-length"), Some("16"));
        assert!(collect(head_resp.into_body()).is_empty());
        // HEAD ignores Range.
        let resp = request(&sf, "HEAD", "/a.txt", &[("range", "bytes=0-1")]);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "content-length"), Some("16"));
    }

    #[test]
    fn if_none_match_gives_304() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        let etag = a_txt_etag();
        let weak = format!("W/{etag}");
        let list = format!("\"nope\", {etag}");
        for inm in [etag.as_str(), weak.as_str(), list.as_str(), "*"] {
            for method in ["GET", "HEAD"] {
                let resp = request(&sf, method, "/a.txt", &[("if-none-match", inm)]);
                assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{inm}");
                assert_eq!(header(&resp, "etag"), Some(etag.as_str()));
                assert!(header(&resp, "last-modified").is_some());
                assert_eq!(header(&resp, "content-length"), None);
                assert!(collect(resp.into_body()).is_empty());
            }
        }
        for inm in ["\"nope\"", "garbage", "\"1-2\", W/\"3-4\""] {
            let resp = get(&sf, "/a.txt", &[("if-none-match", inm)]);
            assert_eq!(resp.status(), StatusCode::OK, "{inm}");
        }
        // If-None-Match takes precedence over If-Modified-Since.
        let resp = get(
            &sf,
            "/a.txt",
            &[
                ("if-none-match", "\"nope\""),
                ("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT"),
            ],
        );
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[test]
    fn if_modified_since_gives_304() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        for ims in [
            "Tue, 14 Nov 2023 22:13:20 GMT",
            "Wed, 15 Nov 2023 00:00:00 GMT",
        ] {
            let resp = get(&sf, "/a.txt", &[("if-modified-since", ims)]);
            assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{ims}");
            assert_eq!(header(&resp, "content-length"), None);
        }
        for ims in ["Tue, 14 Nov 2023 22:13:19 GMT", "not a date"] {
            let resp = get(&sf, "/a.txt", &[("if-modified-since", ims)]);
            assert_eq!(resp.status(), StatusCode::OK, "{ims}");
        }
    }

    #[test]
    fn if_match_and_if_unmodified_since_give_412() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        let etag = a_txt_etag();
        let weak = format!("W/{etag}");
        let resp = get(&sf, "/a.txt", &[("if-match", "\"other\"")]);
        assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(collect(resp.into_body()), b"412 Precondition Failed\n");
        // Strong comparison: a weak tag does not match.
        let resp = get(&sf, "/a.txt", &[("if-match", weak.as_str())]);
        assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
        for ok in [etag.as_str(), "*"] {
            assert_eq!(
                get(&sf, "/a.txt", &[("if-match", ok)]).status(),
                StatusCode::OK
            );
        }
        let resp = get(
            &sf,
            "/a.txt",
            &[("if-unmodified-since", "Tue, 14 Nov 2023 22:13:19 GMT")],
        );
        assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
        let resp = get(
            &sf,
            "/a.txt",
            &[("if-unmodified-since", "Tue, 14 Nov 2023 22:13:20 GMT")],
        );
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[test]
    fn entity_tag_list_parsing() {
        let tags: Vec<_> = EntityTags(r#" "a", W/"b" ,"c,d",,"e""#).collect();
        assert_eq!(
            tags,
            vec![
                (false, "\"a\""),
                (true, "\"b\""),
                (false, "\"c,d\""),
                (false, "\"e\"")
            ]
        );
        assert_eq!(EntityTags(r#""a" junk, "b""#).count(), 0);
        assert_eq!(EntityTags(r#""unterminated"#).count(), 0);
        assert_eq!(EntityTags("").count(), 0);
    }

    // -----------------------------------------------------------------------------------------
    // Ranges
    // -----------------------------------------------------------------------------------------

    fn range(sf: &StaticFiles, value: &str) -> (StatusCode, Option<String>, Vec<u8>) {
        let resp = get(sf, "/a.txt", &[("range", value)]);
        let content_range = header(&resp, "content-range").map(str::to_owned);
        let len = header(&resp, "content-length").map(str::to_owned);
        let (status, body) = status_and_body(resp);
        assert_eq!(len, Some(body.len().to_string()), "{value}");
        (status, content_range, body)
    }

    /// Reads into uninitialised capacity: exactly the bytes asked for from the offset, fewer
    /// only at end of file, and a file streamed chunk by chunk comes out whole.
    #[test]
    fn pread_up_to_reads_exactly_the_range() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let data: Vec<u8> = (0..(CHUNK_SIZE * 2 + 777))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let fd: OwnedFd = std::fs::File::open(&path).unwrap().into();
        assert_eq!(pread_up_to(&fd, 10, 5).unwrap(), data[10..15]);
        assert_eq!(pread_up_to(&fd, 0, 1).unwrap(), data[..1]);
        let tail = data.len() as u64 - 3;
        assert_eq!(pread_up_to(&fd, tail, 100).unwrap(), data[data.len() - 3..]);
        assert!(pread_up_to(&fd, data.len() as u64, 10).unwrap().is_empty());

        let mut stream = FileStream {
            fd,
            offset: 100,
            remaining: data.len() as u64 - 100,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(chunk)) = stream.poll_chunk(&mut cx) {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= CHUNK_SIZE);
            out.extend_from_slice(&chunk);
        }
        assert_eq!(out, data[100..]);
    }

    #[test]
    fn byte_ranges() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        let partial = StatusCode::PARTIAL_CONTENT;
        let cases: &[(&str, StatusCode, Option<&str>, &[u8])] = &[
            ("bytes=0-4", partial, Some("bytes 0-4/16"), b"01234"),
            ("bytes=-3", partial, Some("bytes 13-15/16"), b"def"),
            ("bytes=5-", partial, Some("bytes 5-15/16"), b"56789abcdef"),
            ("bytes=10-100", partial, Some("bytes 10-15/16"), b"abcdef"),
            ("bytes=-100", partial, Some("bytes 0-15/16"), A_TXT),
            ("bytes=15-15", partial, Some("bytes 15-15/16"), b"f"),
            ("Bytes = 1-2", partial, Some("bytes 1-2/16"), b"12"),
            ("bytes=0-1,3-4", StatusCode::OK, None, A_TXT),
            ("bytes=abc", StatusCode::OK, None, A_TXT),
            ("bytes=5-2", StatusCode::OK, None, A_TXT),
            ("bytes=-", StatusCode::OK, None, A_TXT),
            ("bytes=+1-2", StatusCode::OK, None, A_TXT),
            ("items=0-4", StatusCode::OK, None, A_TXT),
            (
                "bytes=0-99999999999999999999999",
                StatusCode::OK,
                None,
                A_TXT,
            ),
        ];
        for &(value, status, content_range, body) in cases {
            let got = range(&sf, value);
            assert_eq!(got.0, status, "{value}");
            assert_eq!(got.1.as_deref(), content_range, "{value}");
            assert_eq!(got.2, body, "{value}");
        }
        for value in ["bytes=16-", "bytes=100-200", "bytes=-0"] {
            let resp = get(&sf, "/a.txt", &[("range", value)]);
            assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{value}");
            assert_eq!(header(&resp, "content-range"), Some("bytes */16"));
            assert_eq!(
                collect(resp.into_body()),
                b"416 Range Not Satisfiable\n".to_vec()
            );
        }
    }

    #[test]
    fn range_on_empty_file_is_unsatisfiable() {
        assert_eq!(parse_range("bytes=0-", 0), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), RangeRequest::Unsatisfiable);
        let fx = fixture();
        fs::write(fx.root.join("empty.txt"), b"").unwrap();
        let sf = handler(&fx, |_| {});
        let resp = get(&sf, "/empty.txt", &[]);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "content-length"), Some("0"));
        assert!(collect(resp.into_body()).is_empty());
    }

    #[test]
    fn if_range() {
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        let etag = a_txt_etag();
        let weak = format!("W/{etag}");
        let with = |if_range: &str| {
            get(
                &sf,
                "/a.txt",
                &[("range", "bytes=0-4"), ("if-range", if_range)],
            )
            .status()
        };
        assert_eq!(with(&etag), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            with("Tue, 14 Nov 2023 22:13:20 GMT"),
            StatusCode::PARTIAL_CONTENT
        );
        assert_eq!(with("\"mismatch\""), StatusCode::OK);
        assert_eq!(with(&weak), StatusCode::OK);
        assert_eq!(with("Tue, 14 Nov 2023 22:13:21 GMT"), StatusCode::OK);
        assert_eq!(with("garbage"), StatusCode::OK);
        let (status, body) = status_and_body(get(
            &sf,
            "/a.txt",
            &[("range", "bytes=0-4"), ("if-range", "\"mismatch\"")],
        ));
        assert_eq!((status, body.as_slice()), (StatusCode::OK, A_TXT));
    }

    // -----------------------------------------------------------------------------------------
    // Precompressed variants
    // -----------------------------------------------------------------------------------------

    const C_PLAIN: &[u8] = b"plain text content, uncompressed";
    const C_BR: &[u8] = b"BROTLI-BYTES";
    const C_GZ: &[u8] = b"GZIP-BYTES!";

    fn precompressed_fixture() -> Fixture {
        let fx = fixture();
        fs::write(fx.root.join("c.txt"), C_PLAIN).unwrap();
        fs::write(fx.root.join("c.txt.br"), C_BR).unwrap();
        fs::write(fx.root.join("c.txt.gz"), C_GZ).unwrap();
        fs::write(fx.root.join("d.js"), b"let x = 1;").unwrap();
        fs::write(fx.root.join("d.js.gz"), C_GZ).unwrap();
        fx
    }

    fn negotiate(sf: &StaticFiles, path: &str, ae: Option<&str>) -> (Option<String>, Vec<u8>) {
        let headers: Vec<(&str, &str)> = ae.map(|v| ("accept-encoding", v)).into_iter().collect();
        let resp = get(sf, path, &headers);
        assert_eq!(resp.status(), StatusCode::OK);
        let enc = header(&resp, "content-encoding").map(str::to_owned);
        (enc, collect(resp.into_body()))
    }

    #[test]
    fn precompressed_selection() {
        let fx = precompressed_fixture();
        let sf = handler(&fx, |_| {});
        let br = (Some("br".to_owned()), C_BR.to_vec());
        let gz = (Some("gzip".to_owned()), C_GZ.to_vec());
        let plain = (None, C_PLAIN.to_vec());
        assert_eq!(
            negotiate(&sf, "/c.txt", Some("gzip, deflate, br, zstd")),
            br
        );
        assert_eq!(negotiate(&sf, "/c.txt", Some("gzip")), gz);
        assert_eq!(negotiate(&sf, "/c.txt", Some("x-gzip")), gz);
        assert_eq!(negotiate(&sf, "/c.txt", Some("br;q=0, gzip;q=0")), plain);
        assert_eq!(negotiate(&sf, "/c.txt", Some("br;q=0, gzip")), gz);
        assert_eq!(negotiate(&sf, "/c.txt", Some("gzip;q=1.0, br;q=0.5")), gz);
        assert_eq!(negotiate(&sf, "/c.txt", Some("BR;Q=0.9")), br);
        assert_eq!(negotiate(&sf, "/c.txt", Some("*")), br);
        assert_eq!(negotiate(&sf, "/c.txt", Some("*;q=0")), plain);
        assert_eq!(negotiate(&sf, "/c.txt", Some("br;q=0, *")), gz);
        assert_eq!(negotiate(&sf, "/c.txt", Some("identity")), plain);
        assert_eq!(
            negotiate(&sf, "/c.txt", Some("identity;q=1, br;q=0.5")),
            plain
        );
        assert_eq!(negotiate(&sf, "/c.txt", Some("br;q=2")), plain);
        assert_eq!(negotiate(&sf, "/c.txt", Some("")), plain);
        assert_eq!(negotiate(&sf, "/c.txt", None), plain);
        // Only a .gz sibling exists.
        let (enc, body) = negotiate(&sf, "/d.js", Some("br, gzip"));
        assert_eq!((enc.as_deref(), body.as_slice()), (Some("gzip"), C_GZ));
        let (enc, _) = negotiate(&sf, "/d.js", Some("br"));
        assert_eq!(enc, None);
    }

    #[test]
    fn precompressed_headers() {
        let fx = precompressed_fixture();
        let sf = handler(&fx, |_| {});
        let resp = get(&sf, "/c.txt", &[("accept-encoding", "br")]);
        assert_eq!(header(&resp, "content-encoding"), Some("br"));
        assert_eq!(
            header(&resp, "content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(header(&resp, "vary"), Some("Accept-Encoding"));
        assert!(header(&resp, "etag").unwrap().ends_with("-br\""));
        assert_eq!(
            header(&resp, "content-length"),
            Some(C_BR.len().to_string().as_str())
        );
        let resp = get(&sf, "/d.js", &[("accept-encoding", "gzip")]);
        assert!(header(&resp, "content-type")
            .unwrap()
            .contains("javascript"));
        assert!(header(&resp, "etag").unwrap().ends_with("-gz\""));
        // Vary is present even when the identity variant is chosen.
        let resp = get(&sf, "/c.txt", &[("accept-encoding", "br;q=0, gzip;q=0")]);
        assert_eq!(header(&resp, "vary"), Some("Accept-Encoding"));
        assert_eq!(header(&resp, "content-encoding"), None);
        let resp = get(&sf, "/c.txt", &[]);
        assert_eq!(header(&resp, "vary"), Some("Accept-Encoding"));
        // No sibling: no Vary.
        assert_eq!(
            header(&get(&sf, "/a.txt", &[("accept-encoding", "br")]), "vary"),
            None
        );
        // 304 keeps Vary.
        let etag = header(&get(&sf, "/c.txt", &[("accept-encoding", "br")]), "etag")
            .unwrap()
            .to_owned();
        let resp = get(
            &sf,
            "/c.txt",
            &[("accept-encoding", "br"), ("if-none-match", &etag)],
        );
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&resp, "vary"), Some("Accept-Encoding"));
        // Same ETag does not match the identity variant.
        let resp = get(&sf, "/c.txt", &[("if-none-match", &etag)]);
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[test]
    fn precompressed_range_and_disabled() {
        let fx = precompressed_fixture();
        let sf = handler(&fx, |_| {});
        let resp = get(
            &sf,
            "/c.txt",
            &[("accept-encoding", "br"), ("range", "bytes=0-5")],
        );
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            header(&resp, "content-range"),
            Some(format!("bytes 0-5/{}", C_BR.len()).as_str())
        );
        assert_eq!(collect(resp.into_body()), &C_BR[..6]);

        let sf = handler(&fx, |c| c.precompressed = false);
        let resp = get(&sf, "/c.txt", &[("accept-encoding", "br, gzip")]);
        assert_eq!(header(&resp, "content-encoding"), None);
        assert_eq!(header(&resp, "vary"), None);
        assert_eq!(collect(resp.into_body()), C_PLAIN);
    }

    #[test]
    fn precompressed_sibling_must_be_regular_file() {
        let fx = fixture();
        fs::write(fx.root.join("e.txt"), b"eee").unwrap();
        fs::create_dir(fx.root.join("e.txt.br")).unwrap();
        symlink("../outside.txt", fx.root.join("e.txt.gz")).unwrap();
        let sf = handler(&fx, |_| {});
        let resp = get(&sf, "/e.txt", &[("accept-encoding", "br, gzip")]);
        assert_eq!(header(&resp, "content-encoding"), None);
        assert_eq!(header(&resp, "vary"), None);
        assert_eq!(collect(resp.into_body()), b"eee");
    }

    #[test]
    fn accept_encoding_parsing() {
        let parse = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            AcceptEncoding::parse(&h)
        };
        let ae = parse("gzip;q=0.8, br ; q=0.9, identity;q=0, *;q=0.001, bad token;q=1");
        assert_eq!(ae.q("gzip"), 800);
        assert_eq!(ae.q("br"), 900);
        assert_eq!(ae.q("zstd"), 1);
        assert_eq!(ae.explicit("identity"), Some(0));
        assert_eq!(ae.explicit("bad token"), None);
        assert_eq!(ae.choose(true, true), Some(Encoding::Br));
        assert_eq!(ae.choose(false, true), Some(Encoding::Gzip));
        assert_eq!(ae.choose(false, false), None);
        assert_eq!(parse("br;q=1.5").q("br"), 0);
        assert_eq!(parse("br;q=0.1234").q("br"), 0);
        assert_eq!(parse("br;q=").q("br"), 0);
        assert_eq!(parse("br;q=1.").q("br"), 1000);
        assert_eq!(parse("br;q=0.05").q("br"), 50);
        assert_eq!(parse_qvalue("1.000"), Some(1000));
        assert_eq!(parse_qvalue("1.001"), None);
        assert_eq!(parse_qvalue("-0"), None);
    }

    // -----------------------------------------------------------------------------------------
    // Streaming
    // -----------------------------------------------------------------------------------------

    fn large_content() -> Vec<u8> {
        (0..(1024 * 1024 + 7u32))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect()
    }

    #[test]
    fn large_file_streams_in_bounded_chunks() {
        let fx = fixture();
        let content = large_content();
        fs::write(fx.root.join("big.bin"), &content).unwrap();
        let sf = handler(&fx, |_| {});
        let resp = get(&sf, "/big.bin", &[]);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(&resp, "content-length"),
            Some(content.len().to_string().as_str())
        );
        assert_eq!(
            header(&resp, "content-type"),
            Some("application/octet-stream")
        );
        let Body::File(mut stream) = resp.into_body() else {
            panic!("a large file must be streamed");
        };
        assert_eq!(stream.remaining(), content.len() as u64);
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        let mut chunks = 0;
        while let Poll::Ready(Some(chunk)) = stream.poll_chunk(&mut cx) {
            let chunk = chunk.unwrap();
            assert!(!chunk.is_empty() && chunk.len() <= CHUNK_SIZE);
            out.extend_from_slice(&chunk);
            chunks += 1;
            assert_eq!(stream.remaining(), (content.len() - out.len()) as u64);
        }
        assert_eq!(chunks, content.len().div_ceil(CHUNK_SIZE));
        assert!(chunks > 1, "the test file must take several chunks");
        assert_eq!(stream.remaining(), 0);
        assert!(out == content, "streamed bytes differ from the file");

        // A range of a large file streams from the right offset.
        let resp = get(&sf, "/big.bin", &[("range", "bytes=100000-")]);
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert!(collect(resp.into_body()) == content[100_000..]);
        // A small range of a large file is read in one go.
        let resp = get(&sf, "/big.bin", &[("range", "bytes=-10")]);
        assert!(matches!(resp.body(), Body::Full(_)));
        assert!(collect(resp.into_body()) == content[content.len() - 10..]);
    }

    #[tokio::test]
    async fn large_file_through_http_body() {
        use http_body_util::BodyExt;
        let fx = fixture();
        let content = large_content();
        fs::write(fx.root.join("big.bin"), &content).unwrap();
        let sf = handler(&fx, |_| {});
        let body = get(&sf, "/big.bin", &[]).into_body();
        assert_eq!(body.size_hint().exact(), Some(content.len() as u64));
        let collected = body.collect().await.unwrap().to_bytes();
        assert!(collected == content.as_slice());
    }

    #[test]
    fn truncated_file_ends_stream_with_error() {
        let fx = fixture();
        let path = fx.root.join("shrink.bin");
        fs::write(&path, vec![7u8; 300 * 1024]).unwrap();
        let sf = handler(&fx, |_| {});
        let Body::File(mut stream) = get(&sf, "/shrink.bin", &[]).into_body() else {
            panic!("expected a stream");
        };
        let mut cx = Context::from_waker(Waker::noop());
        let first = stream.poll_chunk(&mut cx);
        assert!(matches!(first, Poll::Ready(Some(Ok(ref b))) if b.len() == CHUNK_SIZE));
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(CHUNK_SIZE as u64)
            .unwrap();
        let next = stream.poll_chunk(&mut cx);
        assert!(
            matches!(next, Poll::Ready(Some(Err(ref e))) if e.kind() == io::ErrorKind::UnexpectedEof)
        );
        assert!(matches!(stream.poll_chunk(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn far_future_mtime_does_not_panic() {
        let fx = fixture();
        let path = fx.root.join("future.txt");
        fs::write(&path, b"future").unwrap();
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        let file = fs::File::options().write(true).open(&path).unwrap();
        if file.set_modified(far).is_err() {
            return; // file system cannot store it; nothing to test
        }
        let sf = handler(&fx, |_| {});
        let resp = get(&sf, "/future.txt", &[("if-modified-since", "garbage")]);
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(header(&resp, "last-modified").is_some());
    }

    #[test]
    fn mtime_clamped_to_http_date_range() {
        assert_eq!(clamp_mtime(-5i64), 0);
        assert_eq!(clamp_mtime(i64::MAX), MAX_HTTP_DATE_SECS);
        let meta = FileMeta {
            size: 1,
            mtime: clamp_mtime(400_000_000_000u64),
        };
        assert_eq!(meta.last_modified(), "Fri, 31 Dec 9999 23:59:59 GMT");
        let meta = FileMeta {
            size: 0x10,
            mtime: 0xff,
        };
        assert_eq!(meta.etag(None), "\"ff-10\"");
        assert_eq!(meta.etag(Some(Encoding::Br)), "\"ff-10-br\"");
        assert_eq!(meta.etag(Some(Encoding::Gzip)), "\"ff-10-gz\"");
    }

    #[test]
    fn symlinked_directory_escaping_root_is_refused() {
        // With openat2 the kernel refuses any resolution passing outside the root, even when
        // it would come back in. (The canonicalize fallback only checks the final target.)
        let fx = fixture();
        let sf = handler(&fx, |_| {});
        assert_eq!(get(&sf, "/updir/root/a.txt", &[]).status(), NOT_FOUND);
        assert_eq!(get(&sf, "/updir/outside.txt", &[]).status(), NOT_FOUND);
    }

    #[test]
    fn handler_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<StaticFiles>();
        check::<FileStream>();
        let _ = &fixture().tmp;
    }
}
