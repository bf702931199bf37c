//! Term claims: which term owns a pchannel directory, decided without any lock an old owner
//! could hold.
//!
//! ```text
//!  root/{pchannel}/terms/{term:020}     one empty file per claiming term
//! ```
//!
//! A read-write open at term `t` creates (or, at the same term, reuses) the claim file of `t`,
//! then removes every claim of a lower term, syncing the `terms` directory after each step. No
//! file is ever rewritten, so two opens racing cannot undo each other's claim (a read-modify-write
//! of one term file could: the slower, lower one could overwrite the higher one).
//!
//! * The term of the log is the highest claim (and at least a term a version before claims
//!   stored in `TERM`).
//! * A handle of term `t` is still the owner while *its* claim file exists: the path resolves to
//!   the inode it created or opened. Checking that is one `stat`. A newer term removes the file
//!   before it reads the log, so a check that succeeds happened before the newer term's recovery.
//!   Comparing the inode (not just the name) keeps a late open of `t` that re-creates the file
//!   from making a fenced handle of `t` believe it still owns the log.
//! * The handles of one term (in any process) take turns through an exclusive `flock` on the
//!   claim file; handles of different terms never share a lock, so a stopped old owner cannot
//!   block a new one.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sluice_types::Term;

use super::segment::{TERM_FILE, read_term, sync_dir};
use crate::LogError;

/// Subdirectory holding the claims.
pub(super) const CLAIMS_DIR: &str = "terms";
const DIGITS: usize = 20;

/// The path of the claim of `term` in the pchannel directory `dir`.
pub(super) fn claim_path(dir: &Path, term: Term) -> PathBuf {
    dir.join(CLAIMS_DIR)
        .join(format!("{:0width$}", term.0, width = DIGITS))
}

fn parse(name: &str) -> Option<u64> {
    if name.len() != DIGITS || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// The terms that hold a claim, ascending (none when the directory has never been claimed).
pub(super) fn claimed_terms(dir: &Path) -> Result<Vec<u64>, LogError> {
    let claims = dir.join(CLAIMS_DIR);
    let entries = match std::fs::read_dir(&claims) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LogError::io(format!("list {}", claims.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(format!("list {}", claims.display()), e))?;
        if let Some(t) = entry.file_name().to_str().and_then(parse) {
            out.push(t);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The highest claimed term, if any term ever claimed the directory.
pub(super) fn highest_claim(dir: &Path) -> Result<Option<u64>, LogError> {
    Ok(claimed_terms(dir)?.last().copied())
}

/// The term of the log: the highest claim, or the term a version before claims stored.
pub(super) fn current_term(dir: &Path) -> Result<Term, LogError> {
    let path = dir.join(TERM_FILE);
    let legacy = match File::open(&path) {
        Ok(f) => read_term(&f, &path)?.term,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Term(0),
        Err(e) => return Err(LogError::io(format!("open {}", path.display()), e)),
    };
    let claimed = highest_claim(dir)?.map_or(Term(0), Term);
    Ok(legacy.max(claimed))
}

/// Removes the claims of terms below `term` (and syncs the directory if it removed any).
pub(super) fn remove_below(dir: &Path, term: Term) -> Result<(), LogError> {
    let mut removed = false;
    for t in claimed_terms(dir)? {
        if t >= term.0 {
            break;
        }
        let path = claim_path(dir, Term(t));
        match std::fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io(format!("remove {}", path.display()), e)),
        }
    }
    if removed {
        sync_dir(&dir.join(CLAIMS_DIR))?;
    }
    Ok(())
}

/// A handle's claim of its term: the file it created or opened, by inode.
pub(super) struct Claim {
    term: Term,
    path: PathBuf,
    file: File,
    dev: u64,
    ino: u64,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("term", &self.term)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Claim {
    /// Creates the claim of `term` in `dir` durably, or opens it when the term already claimed.
    pub(super) fn acquire(dir: &Path, term: Term) -> Result<Claim, LogError> {
        let claims = dir.join(CLAIMS_DIR);
        if !claims.is_dir() {
            match std::fs::create_dir(&claims) {
                Ok(()) => sync_dir(dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(LogError::io(format!("create {}", claims.display()), e)),
            }
        }
        let path = claim_path(dir, term);
        let (file, created) = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => (f, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| LogError::io(format!("open {}", path.display()), e))?;
                (f, false)
            }
            Err(e) => return Err(LogError::io(format!("create {}", path.display()), e)),
        };
        if created {
            sync_dir(&claims)?;
        }
        let meta = file
            .metadata()
            .map_err(|e| LogError::io(format!("stat {}", path.display()), e))?;
        Ok(Claim {
            term,
            path,
            file,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether this claim still stands: its path still names the file this handle holds.
    pub(super) fn held(&self) -> Result<bool, LogError> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(m.dev() == self.dev && m.ino() == self.ino),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(LogError::io(format!("stat {}", self.path.display()), e)),
        }
    }

    /// A second descriptor of the claim (a `flock` through it excludes this one's), or `None`
    /// when the claim no longer stands.
    pub(super) fn reopen(&self) -> Result<Option<File>, LogError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io(format!("open {}", self.path.display()), e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| LogError::io(format!("stat {}", self.path.display()), e))?;
        Ok((meta.dev() == self.dev && meta.ino() == self.ino).then_some(file))
    }

    /// Takes the term's exclusive lock (handles of this term only).
    pub(super) fn lock(&self) -> Result<(), LogError> {
        self.file
            .lock()
            .map_err(|e| LogError::io(format!("lock {}", self.path.display()), e))
    }

    /// Releases the term's lock.
    pub(super) fn unlock(&self) {
        if let Err(e) = self.file.unlock() {
            tracing::warn!(error = %e, path = %self.path.display(), "unlock failed");
        }
    }

    /// The claim file's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_higher_claim_removes_lower_ones_and_a_recreated_claim_is_not_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(highest_claim(dir.path()).unwrap(), None);
        assert_eq!(current_term(dir.path()).unwrap(), Term(0));
        let three = Claim::acquire(dir.path(), Term(3)).unwrap();
        let three_again = Claim::acquire(dir.path(), Term(3)).unwrap();
        assert!(three.held().unwrap() && three_again.held().unwrap());
        let five = Claim::acquire(dir.path(), Term(5)).unwrap();
        assert_eq!(current_term(dir.path()).unwrap(), Term(5));
        remove_below(dir.path(), Term(5)).unwrap();
        assert!(!three.held().unwrap());
        assert!(three.reopen().unwrap().is_none());
        assert!(five.held().unwrap());
        assert_eq!(claimed_terms(dir.path()).unwrap(), vec![5]);
        // A late open of term 3 re-creates the file: the fenced handle still sees it fenced.
        let late = Claim::acquire(dir.path(), Term(3)).unwrap();
        assert!(late.held().unwrap());
        assert!(!three.held().unwrap());
        assert_eq!(highest_claim(dir.path()).unwrap(), Some(5));
    }

    #[test]
    fn a_term_stored_by_an_older_version_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TERM_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let stored = read_term(&file, &path).unwrap();
        super::super::segment::write_term(&file, &path, stored, Term(7)).unwrap();
        assert_eq!(current_term(dir.path()).unwrap(), Term(7));
        Claim::acquire(dir.path(), Term(9)).unwrap();
        assert_eq!(current_term(dir.path()).unwrap(), Term(9));
    }
}
