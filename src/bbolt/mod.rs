//! A reader of bbolt files, etcd's backend, that trusts nothing in them: the structural check
//! that makes "verified" mean "restores" (a damaged page inside etcd's database streams out into
//! a snapshot with a valid sha256 trailer, and `etcdutl snapshot restore` panics on it), and
//! etcd's own figures from the same walk. It knows nothing of sets or stores.
//!
//! `page`: the on-disk layout. `walk`: the check. `etcd`: revision, key count and hash.

pub mod etcd;
pub mod page;
pub mod walk;

pub(crate) use etcd::varint;
pub use etcd::{Figures, Membership, status};
pub use walk::{Problem, Report, Visitor, check};
