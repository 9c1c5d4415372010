//! The config loader on arbitrary TOML: an error that names the file, or settings that
//! `check-config` prints back to the same settings.
#![no_main]

use etcd_backup::config::Settings;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = PathBuf::from("/etc/etcd-backup/config.toml");
    match Settings::from_sources("fuzz".into(), &[(path.clone(), text.to_string())]) {
        Err(e) => assert!(e.to_string().contains("config.toml"), "{e}"),
        Ok(settings) => {
            let printed = settings.to_toml();
            let again = Settings::from_sources("fuzz".into(), &[(path, printed.clone())])
                .unwrap_or_else(|e| panic!("printed config does not load: {e}\n{printed}"));
            assert_eq!(again.to_toml(), printed);
        }
    }
});
