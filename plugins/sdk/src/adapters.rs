//! Typed plugin traits for the two document protocols, so that a plugin
//! author handles Rust values and never touches JSON bytes: a
//! [`DatabaseCheck`] becomes a pipeline stage through [`CheckStage`], an
//! [`EventHandler`] becomes an event-replay handler through
//! [`EventHandlerStage`].
//!
//! ```ignore
//! genesis_plugin_sdk::export_stage!(CheckStage<MyCheck>, "my-check");
//! ```

use serde_json::Value;

use crate::wire::{
    DescribeResponse, EventHandlerRequest, EventResponse, SqlStatement, StageOutput,
    StagedDatabaseDoc, WireEvent,
};
use crate::PluginStage;

/// A pipeline plugin stage that looks at the staged database and reports.
pub trait DatabaseCheck: Sized + Send + 'static {
    /// Creates the check from its config (a JSON object).
    ///
    /// # Errors
    /// A message naming the bad config key.
    fn new(config: Value) -> Result<Self, String>;

    /// Checks one staged database.
    ///
    /// # Errors
    /// A message when the check could not run at all (findings about the
    /// database belong in the output's errors and warnings instead).
    fn check(&mut self, database: &StagedDatabaseDoc) -> Result<StageOutput, String>;
}

/// Adapts a [`DatabaseCheck`] to the byte-level [`PluginStage`].
pub struct CheckStage<C>(pub C);

impl<C: DatabaseCheck> PluginStage for CheckStage<C> {
    fn new(config: Value) -> Result<Self, String> {
        C::new(config).map(CheckStage)
    }

    fn process(&mut self, input: &[u8]) -> Result<Vec<u8>, String> {
        let database: StagedDatabaseDoc = serde_json::from_slice(input)
            .map_err(|e| format!("the input is not a staged-database document: {e}"))?;
        let output = self.0.check(&database)?;
        serde_json::to_vec(&output).map_err(|e| format!("cannot encode the output: {e}"))
    }
}

/// An event-handler plugin: applies events of some types the built-in replay
/// does not know, as SQL statements.
pub trait EventHandler: Sized + Send + 'static {
    /// Creates the handler from its config (a JSON object).
    ///
    /// # Errors
    /// A message naming the bad config key.
    fn new(config: Value) -> Result<Self, String>;

    /// The event types this handler applies, e.g. `FUNDING_PAYMENT`.
    fn event_types(&self) -> Vec<String>;

    /// The statements that apply one event.
    ///
    /// # Errors
    /// A message naming the event and what is wrong with it; the replay fails.
    fn handle(&mut self, event: &WireEvent) -> Result<Vec<SqlStatement>, String>;
}

/// Adapts an [`EventHandler`] to the byte-level [`PluginStage`].
pub struct EventHandlerStage<H>(pub H);

impl<H: EventHandler> PluginStage for EventHandlerStage<H> {
    fn new(config: Value) -> Result<Self, String> {
        H::new(config).map(EventHandlerStage)
    }

    fn process(&mut self, input: &[u8]) -> Result<Vec<u8>, String> {
        let request: EventHandlerRequest = serde_json::from_slice(input)
            .map_err(|e| format!("the input is not an event-handler request: {e}"))?;
        let encoded = match request {
            EventHandlerRequest::Describe => serde_json::to_vec(&DescribeResponse {
                event_types: self.0.event_types(),
            }),
            EventHandlerRequest::Event { event } => serde_json::to_vec(&EventResponse {
                statements: self.0.handle(&event)?,
            }),
        };
        encoded.map_err(|e| format!("cannot encode the output: {e}"))
    }
}
