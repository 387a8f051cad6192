//! The connection to a PKCS#11 token (`[keys] backend = "pkcs11"`): the module loaded once
//! per process, a login read from the PIN file, and a small pool of sessions. A failed call
//! closes everything (C_Finalize), so the next use starts over: a token put back, or a PIN
//! file fixed, is picked up by the next delivery attempt without a restart.
//!
//! Errors name the token label, the function and its return code in the standard's words
//! (`C_Login returned CKR_PIN_INCORRECT`); the PIN is never in one, nor in a log line.

use crate::config::Pkcs11Settings;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use zeroize::Zeroizing;

/// Sessions kept open for reuse; more are opened when more signers run at once.
const POOL: usize = 4;

/// A failed token operation, in words an operator can act on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("PKCS#11 token \"{token}\": {problem}")]
pub struct TokenError {
    pub token: String,
    /// The PKCS#11 return code (`CKR_PIN_INCORRECT`), when the module gave one.
    pub code: Option<String>,
    pub problem: String,
}

/// One token, shared by everything in the process that uses it (C_Initialize may only be
/// called once per module).
pub struct Token {
    settings: Pkcs11Settings,
    state: Mutex<State>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", self.settings.token_label)
    }
}

#[derive(Default)]
struct State {
    /// Loaded on first use (a failed load is tried again at the next).
    lib: Option<Pkcs11>,
    /// Initialised and logged in; `None` before the first use and after an error.
    open: Option<Open>,
    /// Counts opens, so a session from before a reset is not put back in the pool.
    generation: u64,
}

struct Open {
    slot: Slot,
    idle: Vec<Session>,
}

/// The process's tokens, by settings.
fn registry() -> &'static Mutex<HashMap<Pkcs11Settings, Arc<Token>>> {
    static TOKENS: OnceLock<Mutex<HashMap<Pkcs11Settings, Arc<Token>>>> = OnceLock::new();
    TOKENS.get_or_init(Default::default)
}

/// `CKR_PIN_INCORRECT` for a return value (cryptoki names it `PinIncorrect`).
fn code_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

impl Token {
    /// The token for these settings; nothing is loaded until it is first used.
    pub fn shared(settings: &Pkcs11Settings) -> Arc<Token> {
        let mut tokens = registry().lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .entry(settings.clone())
            .or_insert_with(|| {
                Arc::new(Token {
                    settings: settings.clone(),
                    state: Mutex::new(State::default()),
                })
            })
            .clone()
    }

    pub fn label(&self) -> &str {
        &self.settings.token_label
    }

    pub(crate) fn error(&self, problem: impl Into<String>) -> TokenError {
        TokenError {
            token: self.settings.token_label.clone(),
            code: None,
            problem: problem.into(),
        }
    }

    /// A cryptoki error in words, with a fix for the common ones.
    pub(crate) fn ck_error(&self, e: CkError) -> TokenError {
        match e {
            CkError::Pkcs11(rv, function) => {
                let code = code_name(rv);
                let fix = match rv {
                    RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid => {
                        "; check the PIN in keys.pin_file"
                    }
                    RvError::PinLocked => {
                        "; the token locked the user PIN: unlock it with the SO PIN"
                    }
                    RvError::TokenNotPresent | RvError::DeviceRemoved => {
                        "; the token is not there: reconnect it"
                    }
                    _ => "",
                };
                TokenError {
                    token: self.settings.token_label.clone(),
                    problem: format!("C_{function:?} returned {code}{fix}"),
                    code: Some(code),
                }
            }
            CkError::LibraryLoading(e) => self.error(format!(
                "cannot load the module {} ({e}); check keys.module",
                self.settings.module.display()
            )),
            other => self.error(other.to_string()),
        }
    }

    /// Runs `f` on a logged-in session from the pool. When the module returns an error the
    /// token is closed, so the next call opens it again (a fixed PIN file or a reinserted
    /// token is used then).
    pub fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        let (session, generation) = self.take_session().inspect_err(|e| self.log(e))?;
        match f(&session) {
            Ok(value) => {
                self.give_back(session, generation);
                Ok(value)
            }
            // Our own finding (no such object): the token and the session are fine.
            Err(e) if e.code.is_none() => {
                self.give_back(session, generation);
                Err(e)
            }
            Err(e) => {
                self.log(&e);
                drop(session);
                self.reset(generation);
                Err(e)
            }
        }
    }

    fn log(&self, e: &TokenError) {
        tracing::warn!(
            token = %self.settings.token_label,
            code = e.code.as_deref().unwrap_or("none"),
            error = %e.problem,
            "PKCS#11 token call failed; the token is reopened at next use"
        );
    }

    fn take_session(&self) -> Result<(Session, u64), TokenError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let lib = match &state.lib {
            Some(lib) => lib.clone(),
            None => {
                let lib = Pkcs11::new(&self.settings.module).map_err(|e| self.ck_error(e))?;
                state.lib = Some(lib.clone());
                lib
            }
        };
        if let Some(open) = &mut state.open {
            let session = match open.idle.pop() {
                Some(session) => session,
                // Login state is per application: a new session of a logged-in token is too.
                None => lib
                    .open_rw_session(open.slot)
                    .map_err(|e| self.ck_error(e))?,
            };
            return Ok((session, state.generation));
        }
        match self.open(&lib) {
            Ok((slot, session)) => {
                state.generation += 1;
                state.open = Some(Open {
                    slot,
                    idle: Vec::new(),
                });
                Ok((session, state.generation))
            }
            Err(e) => {
                // Not left initialised half-way: the next attempt starts clean.
                let _ = lib.finalize();
                Err(e)
            }
        }
    }

    /// C_Initialize, find the token by label, open a session and log in.
    fn open(&self, lib: &Pkcs11) -> Result<(Slot, Session), TokenError> {
        match lib.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) | Ok(()) => {}
            Err(e) => return Err(self.ck_error(e)),
        }
        let want = self.settings.token_label.as_str();
        let mut found = None;
        for slot in lib.get_slots_with_token().map_err(|e| self.ck_error(e))? {
            let info = lib.get_token_info(slot).map_err(|e| self.ck_error(e))?;
            if info.label().trim_end() == want {
                found = Some(slot);
                break;
            }
        }
        let slot = found.ok_or_else(|| TokenError {
            token: want.to_string(),
            code: Some("CKR_TOKEN_NOT_PRESENT".into()),
            problem: format!(
                "no token labelled \"{want}\" in {} (pkcs11-tool --module {} -L lists them)",
                self.settings.module.display(),
                self.settings.module.display()
            ),
        })?;
        let session = lib.open_rw_session(slot).map_err(|e| self.ck_error(e))?;
        let pin = self.read_pin()?;
        match session.login(UserType::User, Some(&pin)) {
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) | Ok(()) => {}
            Err(e) => return Err(self.ck_error(e)),
        }
        tracing::info!(token = %want, module = %self.settings.module.display(), "PKCS#11 token opened and logged in");
        Ok((slot, session))
    }

    fn read_pin(&self) -> Result<AuthPin, TokenError> {
        let path = &self.settings.pin_file;
        let text = std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .map_err(|e| {
                self.error(format!("cannot read keys.pin_file {}: {e}", path.display()))
            })?;
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                // Warned, not refused: secret mounts (Kubernetes) are often 0644 by default.
                tracing::warn!(pin_file = %path.display(), mode = %format!("{mode:03o}"), "keys.pin_file is readable by group or others; chmod 600 it");
            }
        }
        let pin = text.trim_end_matches(['\r', '\n']);
        if pin.is_empty() {
            return Err(self.error(format!("keys.pin_file {} is empty", path.display())));
        }
        Ok(AuthPin::from(pin.to_string()))
    }

    fn give_back(&self, session: Session, generation: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.generation != generation {
            return;
        }
        if let Some(open) = &mut state.open {
            if open.idle.len() < POOL {
                open.idle.push(session);
            }
        }
    }

    /// Closes the token so the next use opens it again: a signing key that is not there
    /// may mean another token is in the slot, or the token's files were restored.
    pub(crate) fn reopen_later(&self) {
        let generation = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation;
        self.reset(generation);
    }

    /// Closes the token after an error, unless it was reopened since that session.
    fn reset(&self, generation: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.generation != generation || state.open.is_none() {
            return;
        }
        state.open = None;
        // C_Finalize closes every session, so a token put back is found again by label
        // and the PIN file is read again.
        if let Some(lib) = &state.lib {
            let _ = lib.clone().finalize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_is_read_from_its_file_and_in_no_error_or_debug_form() {
        use secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let pin_file = dir.path().join("pin");
        let token = Token::shared(&Pkcs11Settings {
            module: dir.path().join("absent.so"),
            token_label: "unit".into(),
            pin_file: pin_file.clone(),
        });
        let missing = token.read_pin().err().unwrap();
        assert!(missing.to_string().contains("keys.pin_file"), "{missing}");
        std::fs::write(&pin_file, "s3cret-pin\n").unwrap();
        assert_eq!(token.read_pin().unwrap().expose_secret(), "s3cret-pin");
        assert_eq!(format!("{token:?}"), "Token(unit)");
        // The module is absent: the error names it and the setting, never the PIN.
        let err = token.with_session(|_| Ok(())).err().unwrap();
        assert!(err.to_string().contains("keys.module"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        std::fs::write(&pin_file, "\n").unwrap();
        assert!(token.read_pin().is_err());
    }

    #[test]
    fn return_codes_are_named_as_in_the_standard() {
        assert_eq!(code_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(code_name(RvError::TokenNotPresent), "CKR_TOKEN_NOT_PRESENT");
    }
}
