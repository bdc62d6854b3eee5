//! HKDF for the TLS 1.3 key schedule (and the TLS 1.2 PRF), over HMAC keys prepared once per
//! secret.
//!
//! rustls's aws-lc-rs suites expand with aws-lc's `HKDF_expand`, which keys HMAC afresh on
//! every call: two SHA-256 compressions for the padded key before the two that make the output.
//! A full TLS 1.3 handshake expands about twenty labels from six secrets; that expansion was
//! 4.6 % of a handshake's CPU here. Keeping aws-lc-rs's prepared `hmac::Key` instead saved the
//! compressions but not the time: each use copies and wipes a ~700-byte `HMAC_CTX`.
//!
//! So the HMAC here is RustCrypto's `hmac` over `sha2` (SHA-NI when the CPU has it): a key
//! holds the two 32-byte hash states after the padded key, and each use copies those. Only the
//! glue is ours: the HKDF construction is rustls's own generic
//! [`HkdfUsingHmac`](rustls::crypto::tls13::HkdfUsingHmac) (RFC 5869). The suites keep
//! aws-lc's AEAD and QUIC header protection; FIPS mode is not claimed (as with X25519MLKEM768
//! first, portcullis does not build for FIPS).
//!
//! TLS 1.2 suites get rustls's [`PrfUsingHmac`](rustls::crypto::tls12::PrfUsingHmac) over the
//! same HMAC, for the same reason (aws-lc's `tls1_P_hash` copies its `HMAC_CTX` per block).
//!
//! The transcript hash is `sha2` too ([`Sha2Hash`]): aws-lc-rs keeps a digest in a heap
//! `EVP_MD_CTX`, and rustls takes the running transcript's hash about seven times per TLS 1.3
//! handshake, each an `EVP_MD_CTX_copy_ex` with an allocation and a free; a `sha2` state is
//! copied on the stack.

use std::sync::Mutex;

use hmac::{KeyInit, Mac};
use rustls::crypto::hash::{self, Hash, HashAlgorithm};
use rustls::crypto::hmac::{Hmac, Key, Tag};
use rustls::crypto::tls12::PrfUsingHmac;
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::{CipherSuiteCommon, SupportedCipherSuite, Tls12CipherSuite, Tls13CipherSuite};
use sha2::Digest;

/// HMAC with hash `D`, keys kept in their prepared (inner/outer state) form.
struct PreparedHmac<D>(std::marker::PhantomData<D>);

impl<D> Hmac for PreparedHmac<D>
where
    D: hmac::EagerHash + Send + Sync + 'static,
    hmac::Hmac<D>: Clone + Send + Sync,
{
    fn with_key(&self, key: &[u8]) -> Box<dyn Key> {
        // HMAC takes keys of any length (longer ones are hashed first): this cannot fail.
        let mac = <hmac::Hmac<D> as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        Box::new(PreparedKey(mac))
    }

    fn hash_output_len(&self) -> usize {
        <hmac::Hmac<D> as hmac::digest::OutputSizeUser>::output_size()
    }
}

/// One HMAC key: signing starts from a copy of its prepared states.
struct PreparedKey<D: hmac::EagerHash>(hmac::Hmac<D>);

impl<D> Key for PreparedKey<D>
where
    D: hmac::EagerHash + Send + Sync + 'static,
    hmac::Hmac<D>: Clone + Send + Sync,
{
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
        let mut mac = self.0.clone();
        mac.update(first);
        for part in middle {
            mac.update(part);
        }
        mac.update(last);
        Tag::new(&mac.finalize().into_bytes())
    }

    fn tag_len(&self) -> usize {
        <hmac::Hmac<D> as hmac::digest::OutputSizeUser>::output_size()
    }
}

/// A hash function from RustCrypto's `sha2`, as rustls's transcript hash.
struct Sha2Hash<D> {
    algorithm: HashAlgorithm,
    digest: std::marker::PhantomData<D>,
}

impl<D> Hash for Sha2Hash<D>
where
    D: Digest + Clone + Send + Sync + 'static,
{
    fn start(&self) -> Box<dyn hash::Context> {
        Box::new(Sha2Context(D::new()))
    }

    fn hash(&self, data: &[u8]) -> hash::Output {
        hash::Output::new(&D::digest(data))
    }

    fn output_len(&self) -> usize {
        <D as Digest>::output_size()
    }

    fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }
}

/// A running hash: forks and intermediate results are copies of the state.
struct Sha2Context<D>(D);

impl<D> hash::Context for Sha2Context<D>
where
    D: Digest + Clone + Send + Sync + 'static,
{
    fn fork_finish(&self) -> hash::Output {
        hash::Output::new(&self.0.clone().finalize())
    }

    fn fork(&self) -> Box<dyn hash::Context> {
        Box::new(Sha2Context(self.0.clone()))
    }

    fn finish(self: Box<Self>) -> hash::Output {
        hash::Output::new(&self.0.finalize())
    }

    fn update(&mut self, data: &[u8]) {
        Digest::update(&mut self.0, data);
    }
}

/// By hash: SHA-256, SHA-384.
static HASH: (Sha2Hash<sha2::Sha256>, Sha2Hash<sha2::Sha384>) = (
    Sha2Hash {
        algorithm: HashAlgorithm::SHA256,
        digest: std::marker::PhantomData,
    },
    Sha2Hash {
        algorithm: HashAlgorithm::SHA384,
        digest: std::marker::PhantomData,
    },
);

static HMAC_SHA256: PreparedHmac<sha2::Sha256> = PreparedHmac(std::marker::PhantomData);
static HMAC_SHA384: PreparedHmac<sha2::Sha384> = PreparedHmac(std::marker::PhantomData);
/// By hash: SHA-256, SHA-384.
static HKDF: [HkdfUsingHmac<'static>; 2] =
    [HkdfUsingHmac(&HMAC_SHA256), HkdfUsingHmac(&HMAC_SHA384)];
static PRF: [PrfUsingHmac<'static>; 2] = [PrfUsingHmac(&HMAC_SHA256), PrfUsingHmac(&HMAC_SHA384)];

/// `suites` with every TLS 1.3 suite's HKDF and every TLS 1.2 suite's PRF replaced by the
/// prepared-key ones, and their transcript hash by [`Sha2Hash`]. The new suites are made once
/// per process and shared by every config.
pub fn with_prepared_hmac(suites: &[SupportedCipherSuite]) -> Vec<SupportedCipherSuite> {
    /// Suites made so far (rustls wants `&'static`: each is leaked once, at most nine).
    static MADE: Mutex<Vec<SupportedCipherSuite>> = Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(|p| p.into_inner());
    suites
        .iter()
        .map(|&suite| {
            if let Some(done) = made.iter().find(|m| m.suite() == suite.suite()) {
                return *done;
            }
            // A copy of the suite's common part, and which of our tables its hash selects.
            let common = |c: &CipherSuiteCommon| {
                let (h, hash_provider): (usize, &'static dyn Hash) =
                    match c.hash_provider.algorithm() {
                        HashAlgorithm::SHA256 => (0, &HASH.0),
                        HashAlgorithm::SHA384 => (1, &HASH.1),
                        _ => return None,
                    };
                let copy = CipherSuiteCommon {
                    suite: c.suite,
                    hash_provider,
                    confidentiality_limit: c.confidentiality_limit,
                };
                Some((copy, h))
            };
            let new = match suite {
                SupportedCipherSuite::Tls13(s) => {
                    let Some((common, h)) = common(&s.common) else {
                        return suite;
                    };
                    SupportedCipherSuite::Tls13(Box::leak(Box::new(Tls13CipherSuite {
                        common,
                        hkdf_provider: &HKDF[h],
                        aead_alg: s.aead_alg,
                        quic: s.quic,
                    })))
                }
                SupportedCipherSuite::Tls12(s) => {
                    let Some((common, h)) = common(&s.common) else {
                        return suite;
                    };
                    SupportedCipherSuite::Tls12(Box::leak(Box::new(Tls12CipherSuite {
                        common,
                        prf_provider: &PRF[h],
                        kx: s.kx,
                        sign: s.sign,
                        aead_alg: s.aead_alg,
                    })))
                }
            };
            made.push(new);
            new
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;

    fn tls13(s: SupportedCipherSuite) -> &'static Tls13CipherSuite {
        let SupportedCipherSuite::Tls13(s) = s else {
            panic!("not a TLS 1.3 suite")
        };
        s
    }

    fn tls12(s: SupportedCipherSuite) -> &'static Tls12CipherSuite {
        let SupportedCipherSuite::Tls12(s) = s else {
            panic!("not a TLS 1.2 suite")
        };
        s
    }

    /// The prepared-key HKDF gives exactly aws-lc's HKDF output, for every shape the key
    /// schedule uses: extract from a secret and from zeros, expand to one block, to a short key
    /// and to more than one block, and HMAC signing.
    #[test]
    fn same_output_as_aws_lc_hkdf() {
        for suite in [cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384] {
            let theirs = tls13(suite).hkdf_provider;
            let ours = tls13(with_prepared_hmac(&[suite])[0]).hkdf_provider;
            let salt = b"salt of the earth".as_slice();
            let secret = [7u8; 48];
            let info: [&[u8]; 3] = [b"\x00\x10", b"tls13 key", b"\x00"];
            for (a, b) in [
                (
                    theirs.extract_from_secret(Some(salt), &secret),
                    ours.extract_from_secret(Some(salt), &secret),
                ),
                (
                    theirs.extract_from_zero_ikm(None),
                    ours.extract_from_zero_ikm(None),
                ),
            ] {
                assert_eq!(
                    a.expand_block(&info).as_ref(),
                    b.expand_block(&info).as_ref()
                );
                for len in [12, 16, 32, 100] {
                    let (mut x, mut y) = (vec![0u8; len], vec![1u8; len]);
                    a.expand_slice(&info, &mut x).unwrap();
                    b.expand_slice(&info, &mut y).unwrap();
                    assert_eq!(x, y, "expand to {len} bytes");
                }
                let okm = a.expand_block(&info);
                assert_eq!(
                    theirs.hmac_sign(&okm, b"transcript").as_ref(),
                    ours.hmac_sign(&okm, b"transcript").as_ref()
                );
                assert_eq!(
                    theirs.expander_for_okm(&okm).expand_block(&info).as_ref(),
                    ours.expander_for_okm(&okm).expand_block(&info).as_ref()
                );
            }
        }
    }

    /// The TLS 1.2 PRF gives aws-lc's output, for master-secret, key-block and Finished sizes.
    #[test]
    fn same_prf_output_as_aws_lc() {
        for suite in [
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ] {
            let theirs = tls12(suite).prf_provider;
            let ours = tls12(with_prepared_hmac(&[suite])[0]).prf_provider;
            for len in [12, 40, 48, 72, 100] {
                let (mut x, mut y) = (vec![0u8; len], vec![1u8; len]);
                theirs.for_secret(&mut x, &[9u8; 48], b"key expansion", &[3u8; 64]);
                ours.for_secret(&mut y, &[9u8; 48], b"key expansion", &[3u8; 64]);
                assert_eq!(x, y, "{:?}: {len} bytes", suite.suite());
            }
        }
    }

    /// The sha2 transcript hash gives aws-lc's digests: one-shot, running, forked and
    /// finished, over lengths around the block sizes.
    #[test]
    fn same_transcript_hash_as_aws_lc() {
        for suite in [cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384] {
            let theirs = tls13(suite).common.hash_provider;
            let ours = tls13(with_prepared_hmac(&[suite])[0]).common.hash_provider;
            assert!(!std::ptr::addr_eq(theirs, ours), "replaced");
            assert_eq!(ours.algorithm(), theirs.algorithm());
            assert_eq!(ours.output_len(), theirs.output_len());
            let data: Vec<u8> = (0..700u32).map(|i| (i * 7 + 3) as u8).collect();
            assert_eq!(ours.hash(&data).as_ref(), theirs.hash(&data).as_ref());
            let (mut a, mut b) = (theirs.start(), ours.start());
            assert_eq!(a.fork_finish().as_ref(), b.fork_finish().as_ref(), "empty");
            for len in [1, 55, 56, 63, 64, 65, 111, 112, 127, 128, 129, 200] {
                a.update(&data[..len]);
                b.update(&data[..len]);
                assert_eq!(a.fork_finish().as_ref(), b.fork_finish().as_ref(), "+{len}");
                let (mut fa, mut fb) = (a.fork(), b.fork());
                fa.update(b"fork");
                fb.update(b"fork");
                assert_eq!(
                    fa.finish().as_ref(),
                    fb.finish().as_ref(),
                    "fork after +{len}"
                );
            }
            assert_eq!(a.finish().as_ref(), b.finish().as_ref());
        }
    }

    #[test]
    fn suites_replaced_once_keeping_their_parts() {
        let all = [
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ];
        let a = with_prepared_hmac(&all);
        let b = with_prepared_hmac(&all);
        assert!(std::ptr::eq(tls13(a[0]), tls13(b[0])), "made once");
        assert!(std::ptr::eq(tls12(a[1]), tls12(b[1])), "made once");
        assert!(!std::ptr::eq(tls13(a[0]), tls13(all[0])));
        assert!(!std::ptr::eq(tls12(a[1]), tls12(all[1])));
        assert_eq!(a[0].suite(), all[0].suite());
        assert_eq!(a[1].suite(), all[1].suite());
        assert!(tls13(a[0]).quic.is_some(), "QUIC keys kept");
        assert_eq!(tls12(a[1]).sign, tls12(all[1]).sign);
    }
}
