//! `message-logging-flex`: a line in the runtime log per request (`firstSection`, before it
//! goes upstream) and per response (`secondSection`, when the response head arrives), each
//! `message` an expression over the request or the response. Lines go through the runtime
//! log at their `level`, so the `Configuration`'s `logLevel` filters them, under the target
//! `ringwall::message_logging` with the item's name and `category`. A `conditional` (`true`,
//! `false`, or `==` / `!=` between two expressions) decides whether an exchange is logged.

use std::fmt;
use std::sync::Arc;

use ringwall_config::{Node, Scope};

use super::expr::{Attributes, Condition, Expr};
use super::optional_bool;
use super::{config_fields, each_item, expression, Policy, RequestCx, ResponseCx, Verdict};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

struct Item {
    name: String,
    category: String,
    message: Expr,
    /// Whether to log this exchange at all.
    conditional: Option<Condition>,
    level: Level,
    first: bool,
    second: bool,
}

struct MessageLogging {
    items: Vec<Item>,
}

pub(super) fn build(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    _env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    let fields = config_fields(spec, scope, &["loggingConfiguration"])?;
    let node = scope.require(&fields, "loggingConfiguration")?;
    let path = fields.path_of("loggingConfiguration");
    let items = each_item(node, &path, scope, logging_item)?;
    Some(Arc::new(MessageLogging { items }))
}

fn logging_item(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<Item> {
    let fields = scope.map(node, path, &["itemName", "itemData"])?;
    let name = match fields.get("itemName") {
        Some(n) => scope.str(n, &fields.path_of("itemName")).map(str::to_owned),
        None => Some(String::new()),
    };
    let data_node = scope.require(&fields, "itemData")?;
    let data_path = fields.path_of("itemData");
    let data = scope.map(
        data_node,
        &data_path,
        &[
            "message",
            "level",
            "firstSection",
            "secondSection",
            "category",
            "conditional",
        ],
    )?;
    let message = scope
        .require(&data, "message")
        .and_then(|n| expression(n, &data.path_of("message"), scope));
    let level = match data.get("level") {
        None => Some(Level::Info),
        Some(n) => {
            let path = data.path_of("level");
            scope.str(n, &path).and_then(|text| {
                let level = match text.to_ascii_uppercase().as_str() {
                    "TRACE" => Some(Level::Trace),
                    "DEBUG" => Some(Level::Debug),
                    "INFO" => Some(Level::Info),
                    "WARN" | "WARNING" => Some(Level::Warn),
                    "ERROR" => Some(Level::Error),
                    _ => None,
                };
                if level.is_none() {
                    let message = format!(
                        "unknown level `{text}`; expected TRACE, DEBUG, INFO, WARN or ERROR"
                    );
                    scope.error(n.line, &path, message);
                }
                level
            })
        }
    };
    let first = optional_bool(&data, "firstSection", true, scope);
    let second = optional_bool(&data, "secondSection", false, scope);
    let conditional = match data.get("conditional") {
        None => Some(None),
        Some(n) => {
            let path = data.path_of("conditional");
            scope
                .str(n, &path)
                .and_then(|text| match Condition::parse(text) {
                    Ok(c) => Some(Some(c)),
                    Err(message) => {
                        scope.error(n.line, &path, message);
                        None
                    }
                })
        }
    };
    let category = match data.get("category") {
        Some(n) => scope.str(n, &data.path_of("category")).map(str::to_owned),
        None => Some(String::new()),
    };
    let message = message?;
    let first = first?;
    let conditional = conditional?;
    if first
        && (message.reads_response() || conditional.as_ref().is_some_and(Condition::reads_response))
    {
        let message = "a firstSection message is logged before there is a response: it cannot \
                       read attributes.statusCode (set `firstSection: false`)";
        scope.error(data_node.line, &data.path_of("message"), message);
        return None;
    }
    Some(Item {
        name: name?,
        category: category?,
        message,
        conditional,
        level: level?,
        first,
        second: second?,
    })
}

/// Writes an expression as it is formatted: nothing is built.
struct Show<'a, A: Attributes>(&'a Expr, &'a A);

impl<A: Attributes> fmt::Display for Show<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write(self.1, f);
        Ok(())
    }
}

fn emit(item: &Item, section: &'static str, attrs: &impl Attributes) {
    if item.conditional.as_ref().is_some_and(|c| !c.holds(attrs)) {
        return;
    }
    let message = Show(&item.message, attrs);
    let (name, category) = (item.name.as_str(), item.category.as_str());
    macro_rules! log {
        ($level:ident) => {
            tracing::$level!(target: "ringwall::message_logging", item = name, category,
                section, "{message}")
        };
    }
    match item.level {
        Level::Trace => log!(trace),
        Level::Debug => log!(debug),
        Level::Info => log!(info),
        Level::Warn => log!(warn),
        Level::Error => log!(error),
    }
}

impl Policy for MessageLogging {
    fn request(&self, cx: &mut RequestCx<'_>) -> Verdict {
        for item in self.items.iter().filter(|i| i.first) {
            emit(item, "request", cx);
        }
        Verdict::Continue
    }

    fn response(&self, cx: &mut ResponseCx<'_>) {
        for item in self.items.iter().filter(|i| i.second) {
            emit(item, "response", cx);
        }
    }
}
