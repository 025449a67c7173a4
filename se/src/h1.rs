//! HTTP/1.x message heads and bodies as a reverse proxy sees them: pure
//! functions over bytes, no I/O (the driver is [`crate::relay`]).
//!
//! Heads are parsed with `httparse` (as hyper and Pingora do) and rewritten
//! into a reused buffer: hop-by-hop headers dropped (RFC 9110 §7.6.1),
//! `X-Forwarded-*` / `Forwarded` added. Message framing follows RFC 9112 §6
//! strictly, because a proxy and a server that disagree on where a request
//! ends are how requests get smuggled: `Transfer-Encoding` together with
//! `Content-Length`, differing lengths, a coding other than a final
//! `chunked`, or a malformed chunk are refused, never guessed. Bodies pass
//! through unchanged; [`Chunked`] only finds where a chunked one ends.

use std::fmt::Write as _;
use std::net::IpAddr;

/// Most header lines in one head; more gets 431.
pub const MAX_HEADERS: usize = 128;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the server closes (responses only).
    UntilClose,
}

/// Why a head was refused; [`HeadError::status`] is the answer a client gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head is larger than allowed, or has too many header lines.
    #[error("request head too large")]
    TooLarge,
    /// Not HTTP/1.x syntax.
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    /// The body's framing is ambiguous or invalid.
    #[error("invalid message framing: {0}")]
    Framing(&'static str),
    /// A method this proxy does not relay.
    #[error("method not allowed")]
    Method,
}

impl HeadError {
    /// The status code a client gets for it.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::Malformed(_) | HeadError::Framing(_) => 400,
            HeadError::Method => 405,
        }
    }
}

/// What the proxy adds to a request on its way to a server: the same for
/// every request of a client connection, so rendered once.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// Add `X-Forwarded-For` and `X-Forwarded-Proto` (a client's own
    /// `X-Forwarded-Proto` is dropped).
    x_forwarded: bool,
    /// The headers added to every request, as fields (HTTP/2 servers)...
    fields: Vec<(http::HeaderName, http::HeaderValue)>,
    /// ...and as HTTP/1.1 header lines.
    lines: Vec<u8>,
}

impl Forwarding {
    /// For a client at `client` (over TLS: `tls`), adding `X-Forwarded-For`
    /// and `X-Forwarded-Proto` (`x_forwarded`) and RFC 7239 `Forwarded`
    /// (`forwarded`).
    pub fn new(client: IpAddr, tls: bool, x_forwarded: bool, forwarded: bool) -> Self {
        let proto = if tls { "https" } else { "http" };
        let mut values: Vec<(&'static str, String)> = Vec::new();
        if x_forwarded {
            values.push(("x-forwarded-for", client.to_string()));
            values.push(("x-forwarded-proto", proto.to_string()));
        }
        if forwarded {
            let value = format!("{};proto={proto}", ForwardedFor(client));
            values.push(("forwarded", value));
        }
        let mut lines = Vec::new();
        let mut fields = Vec::with_capacity(values.len());
        for (name, value) in values {
            push_header(&mut lines, name.as_bytes(), value.as_bytes());
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                fields.push((http::HeaderName::from_static(name), v));
            }
        }
        Self {
            x_forwarded,
            fields,
            lines,
        }
    }

    /// Add the same headers to `headers` (requests going out in HTTP/2),
    /// a client's own `X-Forwarded-Proto` replaced.
    pub fn add_to(&self, headers: &mut http::HeaderMap) {
        if self.x_forwarded {
            headers.remove("x-forwarded-proto");
        }
        for (name, value) in &self.fields {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A parsed request head; its rewritten form is in the caller's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head as received (the body starts after them).
    pub len: usize,
    /// `HEAD`: the response has no body whatever it says.
    pub is_head: bool,
    /// GET, HEAD, OPTIONS, TRACE, PUT or DELETE (RFC 9110 §9.2.2): safe to
    /// send again if a connection fails before any response.
    pub idempotent: bool,
    /// HTTP/1.0 (the response must not be chunked).
    pub http10: bool,
    /// How the request body is delimited ([`Framing::Empty`] or a length or chunked).
    pub framing: Framing,
    /// The client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// `Connection: upgrade` with an `Upgrade` header (WebSocket and such).
    pub upgrade: bool,
    /// `Expect: 100-continue` (removed; the proxy answers it itself).
    pub expect_continue: bool,
    /// Where the consistent-hash header's value is in the received head.
    pub hash_value: Option<(usize, usize)>,
}

/// A parsed response head; its rewritten form is in the caller's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the head as received.
    pub len: usize,
    /// Status code.
    pub status: u16,
    /// How the body is delimited.
    pub framing: Framing,
    /// The server keeps the connection open after this response.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// 1xx other than 101: an interim response, the final one follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Hop-by-hop headers: meaningful for one connection only, never relayed.
fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
        "content-length",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6); a list of equal
/// values counts as one.
fn content_length(value: &[u8]) -> Result<u64, HeadError> {
    let mut result = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::Framing("Content-Length is not a number"));
        }
        let n: u64 = std::str::from_utf8(part)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(HeadError::Framing("Content-Length is not a number"))?;
        if result.is_some_and(|r| r != n) {
            return Err(HeadError::Framing("differing Content-Length values"));
        }
        result = Some(n);
    }
    result.ok_or(HeadError::Framing("empty Content-Length"))
}

/// Framing headers collected while copying a head.
#[derive(Default)]
struct Framers {
    length: Option<u64>,
    chunked: Option<bool>,
    connection_close: bool,
    connection_keep_alive: bool,
    connection_upgrade: bool,
    upgrade: Option<usize>,
}

/// The length of a complete head from httparse's verdict, `None` while
/// incomplete, or why it is refused (`malformed` for bad syntax).
fn head_len(
    parsed: httparse::Result<usize>,
    received: usize,
    max_head: usize,
    malformed: &'static str,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) if n > max_head => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if received >= max_head => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => Err(HeadError::Malformed("not HTTP/1.x")),
        Err(_) => Err(HeadError::Malformed(malformed)),
    }
}

impl Framers {
    /// Whether the sender keeps the connection open: HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    fn keep_alive(&self, http10: bool) -> bool {
        if http10 {
            self.connection_keep_alive && !self.connection_close
        } else {
            !self.connection_close
        }
    }

    fn see(&mut self, name: &str, value: &[u8], index: usize) -> Result<(), HeadError> {
        if name.eq_ignore_ascii_case("content-length") {
            let n = content_length(value)?;
            if self.length.is_some_and(|l| l != n) {
                return Err(HeadError::Framing("differing Content-Length values"));
            }
            self.length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if self.chunked == Some(true) {
                return Err(HeadError::Framing("coding after chunked"));
            }
            // The final coding decides; any coding after chunked is invalid.
            let last = value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            self.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            self.connection_close |= has_token(value, "close");
            self.connection_keep_alive |= has_token(value, "keep-alive");
            self.connection_upgrade |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("upgrade") {
            self.upgrade = Some(index);
        }
        Ok(())
    }
}

/// Headers the `Connection` header names, which are hop-by-hop too.
/// Most heads name none or only `keep-alive`/`close`: the first few tokens
/// live inline, so collecting them allocates nothing.
struct Listed<'h> {
    inline: [&'h [u8]; 8],
    len: usize,
    more: Vec<&'h [u8]>,
}

impl<'h> Listed<'h> {
    fn contains(&self, name: &str) -> bool {
        self.inline[..self.len]
            .iter()
            .chain(&self.more)
            .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    }
}

fn connection_listed<'h>(headers: &'h [httparse::Header<'h>]) -> Listed<'h> {
    let mut listed = Listed {
        inline: [&[]; 8],
        len: 0,
        more: Vec::new(),
    };
    let tokens = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty());
    for t in tokens {
        if listed.len < listed.inline.len() {
            listed.inline[listed.len] = t;
            listed.len += 1;
        } else {
            listed.more.push(t);
        }
    }
    listed
}

/// Parse a request head at the start of `buf` and write its rewritten form
/// for a server into `out` (cleared first). `Ok(None)`: incomplete, read
/// more (unless `buf` already holds `max_head` bytes: then it is too large).
pub fn parse_request(
    buf: &[u8],
    max_head: usize,
    fwd: &Forwarding,
    hash_header: Option<&str>,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(len) = head_len(
        req.parse(buf),
        buf.len(),
        max_head,
        "bad request line or header",
    )?
    else {
        return Ok(None);
    };
    let method = req.method.unwrap_or_default();
    let path = req.path.unwrap_or_default();
    let http10 = req.version == Some(0);
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(HeadError::Method);
    }
    if !(path.starts_with('/') || path == "*" || path.contains("://")) {
        return Err(HeadError::Malformed("bad request target"));
    }

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    // An HTTP/1.0 request stays one, so that the server does not answer
    // it chunked; it asks for keep-alive so the connection can be reused.
    out.extend_from_slice(if http10 {
        b" HTTP/1.0\r\nconnection: keep-alive\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    let listed = connection_listed(req.headers);
    let mut framers = Framers::default();
    let mut hosts = 0;
    let mut expect_continue = false;
    let mut hash_value = None;
    for (i, h) in req.headers.iter().enumerate() {
        framers.see(h.name, h.value, i)?;
        if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
        if hash_header.is_some_and(|n| h.name.eq_ignore_ascii_case(n)) && hash_value.is_none() {
            let start = h.value.as_ptr() as usize - buf.as_ptr() as usize;
            hash_value = Some((start, start + h.value.len()));
        }
        if h.name.eq_ignore_ascii_case("expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
                continue;
            }
            return Err(HeadError::Malformed("unsupported Expect"));
        }
        let ours = (fwd.x_forwarded && h.name.eq_ignore_ascii_case("x-forwarded-proto"))
            || is_hop_by_hop(h.name)
            || listed.contains(h.name);
        if !ours {
            push_header(out, h.name.as_bytes(), h.value);
        }
    }
    if !http10 && hosts != 1 {
        return Err(HeadError::Malformed(
            "an HTTP/1.1 request needs exactly one Host",
        ));
    }
    if hosts > 1 {
        return Err(HeadError::Malformed("more than one Host"));
    }
    let framing = match (framers.chunked, framers.length) {
        (Some(_), Some(_)) => {
            return Err(HeadError::Framing(
                "both Transfer-Encoding and Content-Length",
            ))
        }
        (Some(_), None) if http10 => {
            return Err(HeadError::Framing("Transfer-Encoding in HTTP/1.0"))
        }
        (Some(true), None) => Framing::Chunked,
        (Some(false), None) => return Err(HeadError::Framing("final coding is not chunked")),
        (None, Some(0)) | (None, None) => Framing::Empty,
        (None, Some(n)) => Framing::Length(n),
    };
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) => {
            push_length(out, n);
        }
        Framing::Empty if framers.length == Some(0) => {
            out.extend_from_slice(b"content-length: 0\r\n")
        }
        _ => {}
    }
    let upgrade = framers.connection_upgrade && framers.upgrade.is_some();
    if let (true, Some(i)) = (upgrade, framers.upgrade) {
        out.extend_from_slice(b"connection: upgrade\r\n");
        push_header(out, b"upgrade", req.headers[i].value);
    }
    add_forwarding(out, fwd);
    out.extend_from_slice(b"\r\n");
    let keep_alive = framers.keep_alive(http10);
    Ok(Some(RequestHead {
        len,
        is_head: method == "HEAD",
        idempotent: ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"].contains(&method),
        http10,
        framing,
        keep_alive,
        upgrade,
        expect_continue,
        hash_value,
    }))
}

/// Write into `out` (cleared first) the HTTP/1.1 head that carries a
/// request which came over HTTP/2 to a server (RFC 9113 §8.3): the
/// authority becomes `Host`, split `Cookie` fields are joined with `; `,
/// connection-specific fields are dropped, the body is framed by `framing`
/// (a length the client declared, or chunked), and forwarding headers are
/// added as for HTTP/1.x clients. Names and values were validated by the
/// HTTP/2 decoder (no CR, LF or NUL), so nothing can be smuggled here.
pub fn h2_request_head(
    method: &str,
    target: &str,
    authority: Option<&str>,
    headers: &http::HeaderMap,
    framing: Framing,
    fwd: &Forwarding,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(authority) = authority {
        push_header(out, b"host", authority.as_bytes());
    }
    let mut cookies = 0;
    for (name, value) in headers {
        let name = name.as_str();
        let skip = is_hop_by_hop(name)
            || (authority.is_some() && name == "host")
            || name == "expect"
            || (fwd.x_forwarded && name == "x-forwarded-proto");
        if skip {
            continue;
        }
        if name == "cookie" {
            cookies += 1;
            continue;
        }
        push_header(out, name.as_bytes(), value.as_bytes());
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        for (i, value) in headers.get_all(http::header::COOKIE).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) => {
            push_length(out, n);
        }
        Framing::Empty | Framing::UntilClose => {
            if !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS" | "TRACE") {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
    }
    add_forwarding(out, fwd);
    out.extend_from_slice(b"\r\n");
}

fn add_forwarding(out: &mut Vec<u8>, fwd: &Forwarding) {
    out.extend_from_slice(&fwd.lines);
}

/// The `for=` element of a `Forwarded` header (RFC 7239 §6: IPv6 in
/// brackets and quotes).
pub(crate) struct ForwardedFor(pub IpAddr);

impl std::fmt::Display for ForwardedFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => write!(f, "for={ip}"),
            IpAddr::V6(ip) => write!(f, "for=\"[{ip}]\""),
        }
    }
}

/// `data` as one chunk of a chunked body (RFC 9112 §7.1).
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let (mut i, mut n) = (digits.len(), data.len());
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, without `fmt`'s machinery (it is on every head).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `fmt::Write` into a byte buffer.
struct Buf<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Buf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// What the proxy does to a response on its way to the client.
#[derive(Debug, Clone, Copy)]
pub struct ResponseRewrite<'a> {
    /// The request was `HEAD`.
    pub is_head: bool,
    /// The request asked for an upgrade (a 101 then switches protocols).
    pub upgrade: bool,
    /// The connection to the client closes after this response.
    pub close: bool,
    /// The client spoke HTTP/1.0 and keeps the connection open.
    pub http10_keep_alive: bool,
    /// Value of the header naming this SE.
    pub se_name: &'a [u8],
}

/// A response head's verdict: status, framing, and the headers that decide them.
struct ResponseVerdict {
    status: u16,
    framers: Framers,
    framing: Framing,
    switching: bool,
    keep_alive: bool,
}

/// Check a parsed response head (`is_head`: the request was HEAD;
/// `upgrade`: it asked for an upgrade) and decide its framing.
fn response_verdict(
    resp: &httparse::Response<'_, '_>,
    is_head: bool,
    upgrade: bool,
) -> Result<ResponseVerdict, HeadError> {
    let status = resp.code.unwrap_or_default();
    if !(100..600).contains(&status) {
        return Err(HeadError::Malformed("status code out of range"));
    }
    let http10 = resp.version == Some(0);
    let mut framers = Framers::default();
    for (i, h) in resp.headers.iter().enumerate() {
        framers.see(h.name, h.value, i)?;
    }
    let switching = status == 101 && upgrade && framers.upgrade.is_some();
    if status == 101 && !switching {
        return Err(HeadError::Malformed("101 without an upgrade request"));
    }
    let no_body = is_head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if no_body {
        Framing::Empty
    } else {
        match (framers.chunked, framers.length) {
            // RFC 9112 §6.3: chunked wins over a length, but a server that
            // sends both is confused; refuse rather than guess.
            (Some(_), Some(_)) => {
                return Err(HeadError::Framing(
                    "both Transfer-Encoding and Content-Length",
                ))
            }
            (Some(true), None) => Framing::Chunked,
            (Some(false), None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    let keep_alive = !switching && framing != Framing::UntilClose && framers.keep_alive(http10);
    Ok(ResponseVerdict {
        status,
        framers,
        framing,
        switching,
        keep_alive,
    })
}

/// Parse a response head at the start of `buf` for an HTTP/2 client:
/// `header` gets each end-to-end header (hop-by-hop ones and
/// `Connection`-listed ones dropped, `content-length` kept when the body
/// has one). `Ok(None)`: incomplete. Upgrades are not relayed to HTTP/2.
pub fn parse_response_fields(
    buf: &[u8],
    max_head: usize,
    is_head: bool,
    mut header: impl FnMut(&str, &[u8]),
) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Some(len) = head_len(
        resp.parse(buf),
        buf.len(),
        max_head,
        "bad status line or header",
    )?
    else {
        return Ok(None);
    };
    let v = response_verdict(&resp, is_head, false)?;
    if !(100..200).contains(&v.status) {
        let listed = connection_listed(resp.headers);
        for h in resp.headers.iter() {
            let hop = is_hop_by_hop(h.name)
                || listed.contains(h.name)
                || h.name.eq_ignore_ascii_case(crate::SE_HEADER);
            if !hop {
                header(h.name, h.value);
            }
        }
        if let (Framing::Length(_) | Framing::Empty, Some(n)) = (v.framing, v.framers.length) {
            if v.status != 204 {
                header("content-length", n.to_string().as_bytes());
            }
        }
    }
    Ok(Some(ResponseHead {
        len,
        status: v.status,
        framing: v.framing,
        keep_alive: v.keep_alive,
    }))
}

/// Parse a response head at the start of `buf` and write its rewritten form
/// for the client into `out` (cleared first). `Ok(None)`: incomplete.
pub fn parse_response(
    buf: &[u8],
    max_head: usize,
    rw: &ResponseRewrite<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Some(len) = head_len(
        resp.parse(buf),
        buf.len(),
        max_head,
        "bad status line or header",
    )?
    else {
        return Ok(None);
    };
    let ResponseVerdict {
        status,
        framers,
        framing,
        switching,
        keep_alive,
    } = response_verdict(&resp, rw.is_head, rw.upgrade)?;
    let listed = connection_listed(resp.headers);

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let hop = is_hop_by_hop(h.name)
            || listed.contains(h.name)
            || h.name.eq_ignore_ascii_case(crate::SE_HEADER);
        if !hop {
            push_header(out, h.name.as_bytes(), h.value);
        }
    }
    if !(100..200).contains(&status) {
        match (framing, rw.is_head) {
            (Framing::Chunked, _) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            (Framing::Length(n), _) => {
                push_length(out, n);
            }
            // HEAD and 304 keep the length of what a GET would have got.
            (Framing::Empty, _) if status != 204 => {
                if let Some(n) = framers.length {
                    push_length(out, n);
                } else if framers.chunked == Some(true) {
                    out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                }
            }
            (Framing::Empty | Framing::UntilClose, _) => {}
        }
        push_header(out, crate::SE_HEADER.as_bytes(), rw.se_name);
    }
    if switching {
        out.extend_from_slice(b"connection: upgrade\r\n");
        if let Some(i) = framers.upgrade {
            push_header(out, b"upgrade", resp.headers[i].value);
        }
    } else if !(100..200).contains(&status) {
        if rw.close || framing == Framing::UntilClose {
            out.extend_from_slice(b"connection: close\r\n");
        } else if rw.http10_keep_alive {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        keep_alive,
    }))
}

/// The HTTP/2 request that carries a request head rewritten by
/// [`parse_request`] (`head`) to an HTTP/2 server: `Host` becomes the
/// authority (with `scheme`), connection-specific fields are dropped
/// (RFC 9113 §8.2.2), the rest, forwarding headers included, goes as it is.
pub fn h1_head_to_h2(head: &[u8], scheme: &str) -> Result<http::Request<()>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return Err(HeadError::Malformed("bad request head"));
    }
    let method = http::Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed("bad method"))?;
    let path = req.path.unwrap_or_default();
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value);
    let uri = if path.starts_with('/') {
        let host = host.ok_or(HeadError::Malformed("no Host"))?;
        let host = std::str::from_utf8(host).map_err(|_| HeadError::Malformed("bad Host"))?;
        format!("{scheme}://{host}{path}")
    } else if path.contains("://") {
        path.to_string()
    } else {
        return Err(HeadError::Malformed("request target HTTP/2 cannot carry"));
    };
    let mut out = http::Request::new(());
    *out.method_mut() = method;
    *out.uri_mut() = uri
        .parse()
        .map_err(|_| HeadError::Malformed("bad request target"))?;
    *out.version_mut() = http::Version::HTTP_2;
    for h in req.headers.iter() {
        if is_hop_by_hop(h.name) && !h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("host")
        {
            continue;
        }
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Malformed("bad header name"))?;
        let value = http::HeaderValue::from_bytes(h.value)
            .map_err(|_| HeadError::Malformed("bad header value"))?;
        out.headers_mut().append(name, value);
    }
    Ok(out)
}

/// Write into `out` (cleared first) the HTTP/1.x head for a client of a
/// response that came over HTTP/2 with `status` and `headers`; returns how
/// its body is framed for the client: the server's `content-length`, else
/// chunked, or until close for an HTTP/1.0 client (`http10`).
pub fn h2_response_head(
    status: u16,
    headers: &http::HeaderMap,
    rw: &ResponseRewrite<'_>,
    http10: bool,
    out: &mut Vec<u8>,
) -> Framing {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| content_length(v.as_bytes()).ok());
    for (name, value) in headers {
        let name = name.as_str();
        if !(is_hop_by_hop(name) || name.eq_ignore_ascii_case(crate::SE_HEADER)) {
            push_header(out, name.as_bytes(), value.as_bytes());
        }
    }
    let no_body = rw.is_head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = match length {
        _ if no_body => Framing::Empty,
        Some(n) => Framing::Length(n),
        None if http10 => Framing::UntilClose,
        None => Framing::Chunked,
    };
    match (framing, length) {
        (Framing::Length(n), _) => push_length(out, n),
        (Framing::Chunked, _) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        (Framing::Empty, Some(n)) if status != 204 => push_length(out, n),
        _ => {}
    }
    push_header(out, crate::SE_HEADER.as_bytes(), rw.se_name);
    if rw.close || framing == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    } else if rw.http10_keep_alive {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// A response the proxy makes itself (errors, 100 Continue).
pub fn own_response(status: u16, message: &str, se_name: &[u8], close: bool, out: &mut Vec<u8>) {
    out.clear();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let _ = write!(Buf(out), "HTTP/1.1 {status} {reason}\r\n");
    if message.is_empty() && status < 200 {
        out.extend_from_slice(b"\r\n");
        return;
    }
    let _ = write!(
        Buf(out),
        "content-type: text/plain\r\ncontent-length: {}\r\n",
        message.len() + 1
    );
    push_header(out, crate::SE_HEADER.as_bytes(), se_name);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(message.as_bytes());
    out.push(b'\n');
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(&'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk size.
    Size { digits: u8 },
    /// After the size: extensions until CR.
    Extension,
    /// LF after the size line's CR.
    SizeLf,
    /// Chunk data still to come.
    Data,
    /// CR after the data.
    DataCr,
    /// LF after the data.
    DataLf,
    /// At the start of a trailer line (an empty one ends the body).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// LF after a trailer line's CR.
    TrailerLf,
    /// LF after the final empty line's CR.
    EndLf,
    /// The body is complete.
    Done,
}

/// Finds where a chunked body ends while its bytes pass through unchanged
/// (RFC 9112 §7.1). Strict: CRLF line ends only, at most 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    remaining: u64,
    /// Bytes of the current trailer section (bounded).
    trailer_bytes: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

/// Most bytes of trailers one chunked body may carry.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

impl Chunked {
    /// At the start of a body.
    pub fn new() -> Self {
        Self {
            state: ChunkState::Size { digits: 0 },
            remaining: 0,
            trailer_bytes: 0,
        }
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Scan `buf`; returns how many bytes of it belong to the body (all of
    /// it unless the body ends inside it).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        self.feed_with(buf, |_| {})
    }

    /// [`Chunked::feed`], handing `data` each piece of chunk data (the
    /// decoded body) on the way.
    pub fn feed_with(
        &mut self,
        buf: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Data => {
                    let take =
                        (buf.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    data(&buf[i..i + take]);
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Size { digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 16 => {
                        self.remaining = self.remaining << 4 | u64::from(d);
                        self.state = ChunkState::Size { digits: digits + 1 };
                    }
                    Some(_) => return Err(ChunkError("chunk size too large")),
                    None if digits == 0 => return Err(ChunkError("chunk size expected")),
                    None if b == b'\r' => self.state = ChunkState::SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => {
                        self.state = ChunkState::Extension
                    }
                    None => return Err(ChunkError("bad chunk size")),
                },
                ChunkState::Extension => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => return Err(ChunkError("bare LF")),
                    0..=8 | 11..=31 | 127 => return Err(ChunkError("control byte in extension")),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CR without LF"));
                    }
                    self.state = if self.remaining == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("chunk longer than its size"));
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CR without LF"));
                    }
                    self.state = ChunkState::Size { digits: 0 };
                }
                ChunkState::TrailerStart => {
                    self.state = match b {
                        b'\r' => ChunkState::EndLf,
                        b'\n' => return Err(ChunkError("bare LF")),
                        _ => ChunkState::TrailerLine,
                    };
                    self.trailer_bytes += 1;
                }
                ChunkState::TrailerLine => {
                    match b {
                        b'\r' => self.state = ChunkState::TrailerLf,
                        b'\n' => return Err(ChunkError("bare LF")),
                        _ => {}
                    }
                    self.trailer_bytes += 1;
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CR without LF"));
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CR without LF"));
                    }
                    self.state = ChunkState::Done;
                    return Ok(i + 1);
                }
            }
            if self.trailer_bytes > MAX_TRAILER_BYTES {
                return Err(ChunkError("trailers too large"));
            }
            i += 1;
        }
        Ok(i)
    }
}

/// Tracks where a body of some framing ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEnd {
    /// Bytes still to come.
    Length(u64),
    /// A chunked body.
    Chunked(Chunked),
    /// Until the sender closes.
    UntilClose,
}

impl BodyEnd {
    /// The tracker for a body of `framing`.
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => BodyEnd::Length(0),
            Framing::Length(n) => BodyEnd::Length(n),
            Framing::Chunked => BodyEnd::Chunked(Chunked::new()),
            Framing::UntilClose => BodyEnd::UntilClose,
        }
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        match self {
            BodyEnd::Length(n) => *n == 0,
            BodyEnd::Chunked(c) => c.is_done(),
            BodyEnd::UntilClose => false,
        }
    }

    /// [`BodyEnd::feed`], appending the body's data (chunked coding
    /// removed) to `data`.
    pub fn decode(&mut self, buf: &[u8], data: &mut Vec<u8>) -> Result<usize, ChunkError> {
        match self {
            BodyEnd::Chunked(c) => c.feed_with(buf, |d| data.extend_from_slice(d)),
            _ => {
                let n = self.feed(buf)?;
                data.extend_from_slice(&buf[..n]);
                Ok(n)
            }
        }
    }

    /// How many bytes of `buf` belong to the body.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        match self {
            BodyEnd::Length(n) => {
                let take = (buf.len() as u64).min(*n);
                *n -= take;
                Ok(take as usize)
            }
            BodyEnd::Chunked(c) => c.feed(buf),
            BodyEnd::UntilClose => Ok(buf.len()),
        }
    }
}

#[cfg(test)]
mod tests;
