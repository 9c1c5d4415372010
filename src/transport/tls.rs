//! Mutual TLS with the system OpenSSL (FIPS mode, the distribution's fixes): the transport of
//! Pod Mode, where no SSH key reaches the masters. Every node has one certificate, signed by one
//! CA, whose DNS subject alternative name is its node name; it serves as the receiver's server
//! certificate and as the sender's client certificate. A receiver takes the sender's identity
//! from the verified certificate, a sender checks that the receiver's names the node it meant.

use crate::config::{PeerAddr, SpraySettings, TlsSettings};
use crate::protocol::Stream;
use anyhow::{Context, Result, bail};
use openssl::ssl::{
    SslAcceptor, SslConnector, SslContextBuilder, SslFiletype, SslMethod, SslStream, SslVerifyMode,
    SslVersion,
};
use std::io::{Read, Write};
use std::net::TcpStream;

fn check_key_private(settings: &TlsSettings) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&settings.key)
        .with_context(|| format!("cannot read the TLS key '{}'", settings.key.display()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(crate::failure::final_error(format!(
            "the TLS key '{}' is readable by group or others (mode {:o}): refusing it",
            settings.key.display(),
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// The receiving side: requires a client certificate signed by the CA.
pub fn acceptor(settings: &TlsSettings) -> Result<SslAcceptor> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    load_identity(&mut builder, settings)?;
    builder.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    Ok(builder.build())
}

/// The sending side: presents this node's certificate, trusts only the CA.
pub fn connector(settings: &TlsSettings) -> Result<SslConnector> {
    let mut builder = SslConnector::builder(SslMethod::tls())?;
    load_identity(&mut builder, settings)?;
    Ok(builder.build())
}

/// The most of a certificate file read to learn when it expires.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// What is wrong with the first certificate of the PEM `pem` at unix time `now`: expired, or
/// not valid yet. `None`: valid now.
fn validity_problem(pem: &[u8], now: i64) -> Result<Option<String>> {
    use openssl::asn1::Asn1Time;
    let cert = openssl::x509::X509::from_pem(pem).context("not a PEM certificate")?;
    let now = Asn1Time::from_unix(now)?;
    Ok(if cert.not_after() < now {
        Some(format!("expired {}", cert.not_after()))
    } else if cert.not_before() > now {
        Some(format!("is not valid before {}", cert.not_before()))
    } else {
        None
    })
}

/// This node's certificate and the CA are valid now: an expired one would only fail the
/// handshake with words that do not say which side's certificate it was.
fn check_valid_now(settings: &TlsSettings) -> Result<()> {
    let now = chrono::Utc::now().timestamp();
    for (what, path) in [("certificate", &settings.cert), ("CA", &settings.ca)] {
        // Kubernetes mounts a Secret's files through links: followed, as OpenSSL does.
        let mut pem = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_PEM_BYTES).read_to_end(&mut pem))
            .with_context(|| format!("cannot read the TLS {what} '{}'", path.display()))?;
        let problem = validity_problem(&pem, now)
            .with_context(|| format!("the TLS {what} '{}'", path.display()))?;
        if let Some(problem) = problem {
            bail!(
                "this node's TLS {what} '{}' {problem}: renew it (Pod Mode: `helm upgrade \
                 --reuse-values` issues new node certificates)",
                path.display()
            );
        }
    }
    Ok(())
}

/// This node's certificate and key, and the CA, into either side's context (TLS 1.2 or later).
fn load_identity(builder: &mut SslContextBuilder, settings: &TlsSettings) -> Result<()> {
    check_key_private(settings)?;
    check_valid_now(settings)?;
    builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    builder
        .set_certificate_chain_file(&settings.cert)
        .with_context(|| {
            format!(
                "cannot load the TLS certificate '{}'",
                settings.cert.display()
            )
        })?;
    builder
        .set_private_key_file(&settings.key, SslFiletype::PEM)
        .with_context(|| format!("cannot load the TLS key '{}'", settings.key.display()))?;
    builder
        .set_ca_file(&settings.ca)
        .with_context(|| format!("cannot load the TLS CA '{}'", settings.ca.display()))?;
    builder.check_private_key().with_context(|| {
        format!(
            "the TLS key '{}' does not belong to '{}'",
            settings.key.display(),
            settings.cert.display()
        )
    })?;
    Ok(())
}

/// The node name a verified peer certificate carries: its first DNS subject alternative name.
pub fn peer_name<S>(stream: &SslStream<S>) -> Result<String> {
    let cert = stream
        .ssl()
        .peer_certificate()
        .context("the peer presented no certificate")?;
    cert.subject_alt_names()
        .into_iter()
        .flatten()
        .find_map(|name| name.dnsname().map(str::to_string))
        .context("the peer's certificate has no DNS subject alternative name (its node name)")
}

/// A TLS connection carrying the protocol (over a plain socket when sending, over one bound
/// by a session deadline when receiving).
pub struct TlsStream<S = TcpStream>(pub SslStream<S>);

impl<S: Read + Write> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl<S: Read + Write> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<S: Read + Write> Stream for TlsStream<S> {
    /// A close_notify: the other side reads EOF, this side can still read its answer.
    fn close_write(&mut self) -> std::io::Result<()> {
        match self.0.shutdown() {
            Ok(_) => Ok(()),
            Err(e) => Err(e
                .into_io_error()
                .unwrap_or_else(|e| std::io::Error::other(e.to_string()))),
        }
    }
}

/// Connects to the receiver of node `name` at `addr`; its certificate must name `name`.
pub fn connect(
    name: &str,
    addr: &PeerAddr,
    spray: &SpraySettings,
    tls: &TlsSettings,
) -> Result<TlsStream> {
    let connector = connector(tls)?;
    let tcp = crate::transport::tcp::connect(addr, spray)?;
    crate::transport::tcp::bound(&tcp, spray.io_timeout)?;
    let stream = connector.connect(name, tcp).map_err(|e| {
        anyhow::anyhow!(
            "TLS handshake with {addr} failed (its certificate must be signed by '{}' and name '{name}'): {e}",
            tls.ca.display()
        )
    })?;
    Ok(TlsStream(stream))
}

/// `tls-issue`: issues this node's certificate from the CA files and writes `tls.key` (0600),
/// `tls.crt` and `ca.crt` into `out` (0700). Returns the certificate's path.
pub fn issue_into(
    ca_cert: &std::path::Path,
    ca_key: &std::path::Path,
    name: &str,
    out: &std::path::Path,
    days: u32,
) -> Result<std::path::PathBuf> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))
    };
    let (ca_pem, key_pem) = (read(ca_cert)?, read(ca_key)?);
    let (cert, key) = issue(&ca_pem, &key_pem, name, days)?;
    crate::files::ensure_private_dir(out)?;
    crate::files::write_atomic(out, "tls.key", &key)?;
    crate::files::write_atomic(out, "tls.crt", &cert)?;
    crate::files::write_atomic(out, "ca.crt", &ca_pem)?;
    Ok(out.join("tls.crt"))
}

/// Issues a certificate for node `name` (DNS SAN, server and client use), signed by the CA,
/// with a fresh ECDSA P-256 key: what a pod runs at start, so that no list of masters is fixed
/// at install time. Returns (certificate PEM, key PEM).
pub fn issue(
    ca_cert_pem: &[u8],
    ca_key_pem: &[u8],
    name: &str,
    days: u32,
) -> Result<(Vec<u8>, Vec<u8>)> {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{
        BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    };
    use openssl::x509::{X509, X509NameBuilder};
    if !crate::manifest::is_node_name(name) {
        bail!("'{name}' is not a node name");
    }
    let ca = X509::from_pem(ca_cert_pem).context("the CA certificate is not PEM")?;
    let ca_key = PKey::private_key_from_pem(ca_key_pem).context("the CA key is not PEM")?;
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut subject = X509NameBuilder::new()?;
    subject.append_entry_by_nid(Nid::COMMONNAME, name)?;
    let subject = subject.build();
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&subject)?;
    builder.set_issuer_name(ca.subject_name())?;
    builder.set_pubkey(&key)?;
    let (not_before, not_after) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(days)?);
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    builder.append_extension(BasicConstraints::new().critical().build()?)?;
    builder.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_agreement()
            .build()?,
    )?;
    builder.append_extension(
        ExtendedKeyUsage::new()
            .server_auth()
            .client_auth()
            .build()?,
    )?;
    let san = SubjectAlternativeName::new()
        .dns(name)
        .build(&builder.x509v3_context(Some(&ca), None))?;
    builder.append_extension(san)?;
    builder.sign(&ca_key, MessageDigest::sha256())?;
    Ok((builder.build().to_pem()?, key.private_key_to_pem_pkcs8()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA from the openssl CLI: its certificate and key in one PEM.
    fn test_ca() -> Vec<u8> {
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "30", "-subj", "/CN=test CA"])
            .args(["-keyout", "/dev/stdout", "-out", "/dev/stdout"])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }

    #[test]
    fn an_issued_certificate_names_the_node_and_verifies_against_the_ca() {
        let pem = String::from_utf8(test_ca()).unwrap();
        let (cert, key) = issue(pem.as_bytes(), pem.as_bytes(), "master-1", 30).unwrap();
        let cert = openssl::x509::X509::from_pem(&cert).unwrap();
        let names: Vec<String> = cert
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|n| n.dnsname().map(str::to_string))
            .collect();
        assert_eq!(names, ["master-1"]);
        let ca = openssl::x509::X509::from_pem(pem.as_bytes()).unwrap();
        assert!(cert.verify(&ca.public_key().unwrap()).unwrap());
        let key = openssl::pkey::PKey::private_key_from_pem(&key).unwrap();
        assert!(cert.public_key().unwrap().public_eq(&key));
        assert!(issue(pem.as_bytes(), pem.as_bytes(), "not a name", 1).is_err());
    }

    #[test]
    fn an_expired_certificate_is_named_before_any_handshake() {
        let ca = test_ca();
        let (cert, _) = issue(&ca, &ca, "master-1", 30).unwrap();
        let x509 = openssl::x509::X509::from_pem(&cert).unwrap();
        let epoch = openssl::asn1::Asn1Time::from_unix(0).unwrap();
        let at = |t: &openssl::asn1::Asn1TimeRef| {
            let d = epoch.diff(t).unwrap();
            i64::from(d.days) * 86_400 + i64::from(d.secs)
        };
        let (from, until) = (at(x509.not_before()), at(x509.not_after()));
        assert_eq!(validity_problem(&cert, from).unwrap(), None);
        assert_eq!(validity_problem(&cert, until).unwrap(), None);
        assert!(
            validity_problem(&cert, until + 1)
                .unwrap()
                .is_some_and(|p| p.starts_with("expired ")),
        );
        assert!(
            validity_problem(&cert, from - 1)
                .unwrap()
                .is_some_and(|p| p.starts_with("is not valid before ")),
        );
        assert!(validity_problem(b"not pem", from).is_err());
    }
}
