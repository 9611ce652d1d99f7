//! Precompiled plugins on disk (`AIGW_PLUGINS__CACHE_DIR`): a restart or a new replica loads the
//! machine code an earlier run compiled instead of compiling every component again.
//!
//! An entry is native code that runs outside the sandbox's checks, so it is loaded only when all
//! of these hold: its name carries the component's digest and this engine's key (wasmtime's
//! compatibility hash of the compiler settings, the CPU features and its version, plus aigw's
//! version); it is a regular file owned by this process's user and writable by nobody else
//! (another user in a shared volume cannot plant one); and its checksum matches what is read,
//! which is what is deserialized (a torn or corrupted file is never loaded). Anything else is
//! ignored and replaced by a fresh compile.

use super::runtime::hex;
use sha2::{Digest, Sha256};
use std::hash::Hash;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// First bytes of every entry; bumped when the layout changes.
const MAGIC: &[u8] = b"aigw-precompiled-plugin/1\n";
/// Larger entries are not read (a compiled provider is a few MB).
const MAX_ENTRY_BYTES: u64 = 512 << 20;
const EXTENSION: &str = "cwasm";

/// The cache directory and the key of the engine that reads and writes it.
#[derive(Debug)]
pub(crate) struct CompiledCache {
    dir: PathBuf,
    engine_key: String,
    user: u32,
}

/// What a lookup found.
pub(crate) enum Lookup {
    Hit(Component),
    Miss,
    /// An entry was there but is not loaded; why, for the log.
    Rejected(String),
}

impl CompiledCache {
    /// The cache in `dir` (created, readable only by this user, if missing) for `engine`.
    pub(crate) fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.0.update(MAGIC);
        hasher.0.update(env!("CARGO_PKG_VERSION").as_bytes());
        let engine_key = hex(&hasher.0.finalize()[..8]);
        Ok(CompiledCache { dir: dir.to_path_buf(), engine_key, user: owner_of_new_files(dir)? })
    }

    fn entry(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.{EXTENSION}", self.engine_key))
    }

    /// The component compiled earlier from the bytes whose SHA-256 is `digest`, if a trusted,
    /// intact entry is there.
    pub(crate) fn get(&self, engine: &Engine, digest: &str) -> Lookup {
        let path = self.entry(digest);
        let metadata = match std::fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Rejected(format!("cannot be inspected: {e}")),
        };
        if !metadata.file_type().is_file() {
            return Lookup::Rejected("not a regular file".into());
        }
        if metadata.uid() != self.user || metadata.permissions().mode() & 0o022 != 0 {
            return Lookup::Rejected(format!(
                "owned by user {} with mode {:o}: only entries this user wrote and nobody else can change are loaded",
                metadata.uid(),
                metadata.permissions().mode() & 0o7777
            ));
        }
        if metadata.len() > MAX_ENTRY_BYTES {
            return Lookup::Rejected(format!("{} bytes, more than an entry can be", metadata.len()));
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => return Lookup::Rejected(format!("cannot be read: {e}")),
        };
        let Some(code) = verified(&bytes) else {
            return Lookup::Rejected("its checksum does not match its contents (torn or corrupted)".into());
        };
        // SAFETY: wasmtime requires that the bytes be what `Component::serialize` wrote for a
        // compatible engine. They are: the checksum over exactly these in-memory bytes matches the
        // one `put` wrote beside them, in a file only this user could have written (checked
        // above), under a name that carries this engine's compatibility key; and wasmtime itself
        // refuses bytes from another version or configuration.
        #[allow(unsafe_code, reason = "loading machine code this process's user compiled and checksummed")]
        let component = unsafe { Component::deserialize(engine, code) };
        match component {
            Ok(component) => Lookup::Hit(component),
            Err(e) => Lookup::Rejected(format!("not loadable by this engine: {e:#}")),
        }
    }

    /// Write `component` (compiled from the bytes whose SHA-256 is `digest`) for the next start.
    /// A failure is logged: the cache only saves time.
    pub(crate) fn put(&self, digest: &str, component: &Component) {
        let written = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
            .and_then(|code| self.write_entry(digest, &code));
        if let Err(error) = written {
            tracing::warn!(dir = %self.dir.display(), %error, "precompiled plugin not cached");
        }
    }

    fn write_entry(&self, digest: &str, code: &[u8]) -> std::io::Result<()> {
        let path = self.entry(digest);
        // A unique hidden name, renamed into place: a reader never sees half an entry.
        let staging = self.dir.join(format!(".{digest}.{}.{:?}.tmp", std::process::id(), std::thread::current().id()));
        let result = (|| {
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&staging)?;
            file.write_all(MAGIC)?;
            file.write_all(&Sha256::digest(code))?;
            file.write_all(code)?;
            file.sync_all()?;
            std::fs::rename(&staging, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
        result
    }

    /// Remove entries for components no longer loaded and entries of other engines, so that
    /// plugin swaps do not fill the volume.
    pub(crate) fn retain(&self, digests: &[&str]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let keep: Vec<PathBuf> = digests.iter().map(|digest| self.entry(digest)).collect();
        for path in entries.flatten().map(|entry| entry.path()) {
            if path.extension().is_some_and(|ext| ext == EXTENSION)
                && !keep.contains(&path)
                && let Err(error) = std::fs::remove_file(&path)
            {
                tracing::debug!(file = %path.display(), %error, "stale precompiled plugin not removed");
            }
        }
    }
}

/// The user that owns what this process writes in `dir` (its effective user), read off a file
/// made and removed there: that also proves at start that the directory is writable.
fn owner_of_new_files(dir: &Path) -> std::io::Result<u32> {
    let probe = dir.join(format!(".owner-probe.{}", std::process::id()));
    let _ = std::fs::remove_file(&probe);
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&probe)?;
    let owner = file.metadata().map(|metadata| metadata.uid());
    std::fs::remove_file(&probe)?;
    owner
}

/// The machine code of an entry whose checksum matches, or `None`.
fn verified(entry: &[u8]) -> Option<&[u8]> {
    let rest = entry.strip_prefix(MAGIC)?;
    let (checksum, code) = rest.split_at_checked(32)?;
    (Sha256::digest(code)[..] == *checksum).then_some(code)
}

/// Feeds `Hash` output into SHA-256: a key that is the same on every run and machine, which
/// `DefaultHasher` does not promise.
struct Sha256Hasher(Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes([digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component there is (preamble only): compiles in microseconds.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";
    const DIGEST: &str = "00aa";

    fn engine(epoch_interruption: bool) -> Engine {
        Engine::new(wasmtime::Config::new().epoch_interruption(epoch_interruption)).unwrap()
    }

    fn cached(engine: &Engine) -> (tempfile::TempDir, CompiledCache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompiledCache::open(&dir.path().join("cache"), engine).unwrap();
        cache.put(DIGEST, &Component::new(engine, EMPTY_COMPONENT).unwrap());
        (dir, cache)
    }

    fn rejected(lookup: Lookup) -> String {
        match lookup {
            Lookup::Rejected(why) => why,
            Lookup::Hit(_) => panic!("loaded"),
            Lookup::Miss => panic!("not found"),
        }
    }

    #[test]
    fn a_stored_compilation_is_loaded_back_and_private_to_this_user() {
        let engine = engine(true);
        let (_dir, cache) = cached(&engine);
        assert!(matches!(cache.get(&engine, DIGEST), Lookup::Hit(_)));
        assert!(matches!(cache.get(&engine, "00bb"), Lookup::Miss), "another component");
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&cache.dir), mode(&cache.entry(DIGEST))), (0o700, 0o600));
    }

    #[test]
    fn an_entry_from_another_engine_configuration_is_never_loaded() {
        let (ours, theirs) = (engine(true), engine(false));
        let (dir, cache) = cached(&ours);
        let other = CompiledCache::open(&dir.path().join("cache"), &theirs).unwrap();
        assert_ne!(cache.entry(DIGEST), other.entry(DIGEST), "another configuration, another entry");
        assert!(matches!(other.get(&theirs, DIGEST), Lookup::Miss));
        // Their machine code under our name, with a checksum that matches: wasmtime refuses it.
        let code = Component::new(&theirs, EMPTY_COMPONENT).unwrap().serialize().unwrap();
        std::fs::remove_file(cache.entry(DIGEST)).unwrap();
        cache.write_entry(DIGEST, &code).unwrap();
        assert!(rejected(cache.get(&ours, DIGEST)).contains("not loadable by this engine"));
    }

    #[test]
    fn a_corrupt_or_torn_entry_is_never_loaded_and_a_new_compile_replaces_it() {
        let engine = engine(true);
        let (_dir, cache) = cached(&engine);
        let path = cache.entry(DIGEST);
        let intact = std::fs::read(&path).unwrap();
        let mut flipped = intact.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        assert!(rejected(cache.get(&engine, DIGEST)).contains("checksum"));
        std::fs::write(&path, &intact[..intact.len() - 100]).unwrap();
        assert!(rejected(cache.get(&engine, DIGEST)).contains("checksum"));
        cache.put(DIGEST, &Component::new(&engine, EMPTY_COMPONENT).unwrap());
        assert!(matches!(cache.get(&engine, DIGEST), Lookup::Hit(_)), "replaced");
    }

    #[test]
    fn an_entry_another_user_could_have_written_is_never_loaded() {
        let engine = engine(true);
        let (dir, cache) = cached(&engine);
        let path = cache.entry(DIGEST);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(rejected(cache.get(&engine, DIGEST)).contains("mode 666"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if cache.user == 0 {
            std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
            assert!(rejected(cache.get(&engine, DIGEST)).contains("owned by user 4242"));
        }
        // A link to an entry elsewhere is not followed.
        std::fs::remove_file(&path).unwrap();
        let elsewhere = dir.path().join("planted");
        std::fs::write(&elsewhere, b"anything").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(rejected(cache.get(&engine, DIGEST)).contains("not a regular file"));
    }

    #[test]
    fn retain_removes_entries_of_unloaded_components_and_other_engines() {
        let (ours, theirs) = (engine(true), engine(false));
        let (dir, cache) = cached(&ours);
        cache.put("00bb", &Component::new(&ours, EMPTY_COMPONENT).unwrap());
        let other = CompiledCache::open(&dir.path().join("cache"), &theirs).unwrap();
        other.put(DIGEST, &Component::new(&theirs, EMPTY_COMPONENT).unwrap());
        std::fs::write(dir.path().join("cache/notes.txt"), b"kept").unwrap();
        cache.retain(&["00bb"]);
        let mut left: Vec<String> = std::fs::read_dir(&cache.dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let kept = cache.entry("00bb").file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(left, [kept, "notes.txt".to_string()]);
    }

    #[test]
    fn only_an_intact_entry_verifies() {
        let code = b"machine code".to_vec();
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(&Sha256::digest(&code));
        entry.extend_from_slice(&code);
        assert_eq!(verified(&entry), Some(&code[..]));
        let mut flipped = entry.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(verified(&flipped), None, "one bit changed");
        assert_eq!(verified(&entry[..entry.len() - 1]), None, "torn");
        assert_eq!(verified(&entry[..MAGIC.len() + 10]), None, "cut inside the checksum");
        assert_eq!(verified(b"aigw-precompiled-plugin/0\n"), None, "another layout");
    }
}
