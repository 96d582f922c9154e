//! JSON <-> Rhai values: the snapshot, `state` and `params` go in as Rhai maps, decisions and
//! `state` come back out as JSON. Pure data conversion; no I/O.

use rhai::{Array, Dynamic, Map};
use serde_json::Value;

/// A JSON value as a Rhai value (objects become maps, numbers `i64` when integral).
pub fn to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(a) => Dynamic::from_array(a.iter().map(to_dynamic).collect::<Array>()),
        Value::Object(o) => {
            Dynamic::from_map(o.iter().map(|(k, v)| (k.as_str().into(), to_dynamic(v))).collect::<Map>())
        }
    }
}

/// A Rhai value as JSON; values JSON cannot hold (functions, custom types) are an error
/// naming their type, and so is nesting deeper than any reader accepts (serde_json's 128
/// levels; `queue::validate` then applies the stored values' own, lower limit with a field name).
pub fn to_json(v: &Dynamic) -> Result<Value, String> {
    to_json_at(v, 1)
}

/// Deeper than this, a value could not be read back by serde_json.
const READABLE_DEPTH: usize = 127;

fn to_json_at(v: &Dynamic, depth: usize) -> Result<Value, String> {
    if (v.is_array() || v.is_map()) && depth > READABLE_DEPTH {
        return Err(format!("a value nested more than {READABLE_DEPTH} levels deep cannot be stored as JSON"));
    }
    let to_json = |v: &Dynamic| to_json_at(v, depth + 1);
    if v.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = v.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = v.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(f) = v.as_float() {
        return Ok(serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number));
    }
    if v.is_string() || v.is_char() {
        return Ok(Value::String(v.to_string()));
    }
    if v.is_array() {
        let a = v.read_lock::<Array>().ok_or("an array that cannot be read")?;
        return a.iter().map(to_json).collect::<Result<Vec<_>, _>>().map(Value::Array);
    }
    if v.is_map() {
        let m = v.read_lock::<Map>().ok_or("a map that cannot be read")?;
        let mut out = serde_json::Map::new();
        for (k, v) in m.iter() {
            out.insert(k.to_string(), to_json(v)?);
        }
        return Ok(Value::Object(out));
    }
    Err(format!("a value of type {} cannot be stored as JSON", v.type_name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v = serde_json::json!({"a": 1, "b": [true, null, 2.5, "x"], "c": {"d": -3}});
        assert_eq!(to_json(&to_dynamic(&v)).unwrap(), v);
    }
}
