//! [`Text`]: a string of a status that many objects share, kept once.
//!
//! Every Running Instance carries the same condition types, reasons and
//! messages ("Ready", "Reconciled", "the last reconcile succeeded") and the
//! same history phases and reasons. Held as `String`s, each of the ~10,000
//! objects in the cache kept its own copy of each: about forty small heap
//! blocks per object, the largest part of what an Instance costs at rest.
//! `Text` interns them ([`internment::ArcIntern`]): one copy per distinct
//! string, shared by every object (and every clone) that holds it, and freed
//! with the last holder, so a message that names one object costs no more
//! than a `String` did.
//!
//! On the wire and in the CRD schema a `Text` is a plain string.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use internment::ArcIntern;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A shared, immutable string of a status. Reads as a `&str`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Text(ArcIntern<str>);

impl Text {
    pub fn new(text: &str) -> Self {
        Self(ArcIntern::from(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For `skip_serializing_if`, which names a function of `&Text`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Default for Text {
    fn default() -> Self {
        Self::new("")
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

// Ordered as the strings are (interned values compare by address).
impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<&String> for Text {
    fn from(text: &String) -> Self {
        Self::new(text)
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self::new(&text)
    }
}

impl From<Cow<'_, str>> for Text {
    fn from(text: Cow<'_, str>) -> Self {
        Self::new(&text)
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.as_str().to_owned()
    }
}

impl From<&Text> for String {
    fn from(text: &Text) -> Self {
        text.as_str().to_owned()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor, so that a string read straight from the response body
        // is interned without first being copied into a String of its own.
        struct TextVisitor;
        impl serde::de::Visitor<'_> for TextVisitor {
            type Value = Text;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Text, E> {
                Ok(Text::new(text))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

impl JsonSchema for Text {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "String".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_are_held_once_and_read_as_themselves() {
        let a = Text::from(String::from("the last reconcile succeeded"));
        let b: Text = serde_json::from_str(r#""the last reconcile succeeded""#).unwrap();
        assert_eq!(a, b);
        assert!(std::ptr::eq(a.as_str(), b.as_str()), "one copy for both");
        assert_eq!(a, "the last reconcile succeeded");
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#""the last reconcile succeeded""#
        );
        assert_eq!(
            format!("{a} / {a:?}"),
            r#"the last reconcile succeeded / "the last reconcile succeeded""#
        );
    }

    #[test]
    fn a_text_orders_and_schemas_as_a_string() {
        let mut texts = vec![Text::from("b"), Text::from("a"), Text::from("c")];
        texts.sort();
        assert_eq!(texts, ["a", "b", "c"].map(Text::from));
        let mut generator = SchemaGenerator::default();
        assert_eq!(
            generator.subschema_for::<Text>(),
            generator.subschema_for::<String>()
        );
    }
}
