//! Rows of Arrow record batches (from Parquet files and `datasets`' Arrow files) as the JSON
//! records the forms read, so that a Parquet row and a JSONL line of the same data are one
//! record to `forms.rs`.
//!
//! Strings, numbers, booleans, lists and structs map onto their JSON counterparts; a null
//! top-level column or struct field is left out of the record, as a JSONL line without that
//! field: pyarrow and `datasets` unify the schema of mixed records, so a chat record in a file
//! that also holds prompt/completion records carries `prompt: null`, and the form is told by the
//! fields the record has. Dictionary-encoded columns read as their values.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use serde_json::{Map, Number, Value};

/// Row `i` of `batch` as a JSON object of its non-null columns; an error names the column
/// whose value cannot be read as JSON.
pub(super) fn row_value(batch: &RecordBatch, i: usize) -> Result<Value, String> {
    let mut out = Map::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let v = value(column.as_ref(), i).map_err(|e| format!("field `{}`: {e}", field.name()))?;
        if !v.is_null() {
            out.insert(field.name().clone(), v);
        }
    }
    Ok(Value::Object(out))
}

/// Element `i` of `a` as JSON.
fn value(a: &dyn Array, i: usize) -> Result<Value, String> {
    if a.is_null(i) {
        return Ok(Value::Null);
    }
    let float = |x: f64| Number::from_f64(x).map_or(Value::Null, Value::Number);
    Ok(match a.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Int8 => a.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float16 => float(a.as_primitive::<Float16Type>().value(i).to_f64()),
        DataType::Float32 => float(a.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => float(a.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => a.as_string::<i32>().value(i).into(),
        DataType::LargeUtf8 => a.as_string::<i64>().value(i).into(),
        DataType::Utf8View => a.as_string_view().value(i).into(),
        DataType::List(_) => list(a.as_list::<i32>().value(i).as_ref())?,
        DataType::LargeList(_) => list(a.as_list::<i64>().value(i).as_ref())?,
        DataType::FixedSizeList(..) => list(a.as_fixed_size_list().value(i).as_ref())?,
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let mut out = Map::new();
            for (field, column) in fields.iter().zip(s.columns()) {
                let v =
                    value(column.as_ref(), i).map_err(|e| format!("`{}`: {e}", field.name()))?;
                if !v.is_null() {
                    out.insert(field.name().clone(), v);
                }
            }
            Value::Object(out)
        }
        DataType::Dictionary(..) => {
            let d = a.as_any_dictionary();
            let key = index(d.keys(), i)?;
            value(d.values().as_ref(), key)?
        }
        other => {
            return Err(format!(
                "a value of Arrow type {other}, which is not read as text"
            ));
        }
    })
}

/// The elements of one list value.
fn list(a: &dyn Array) -> Result<Value, String> {
    (0..a.len())
        .map(|j| value(a, j).map_err(|e| format!("item {j}: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// A dictionary key as an index into its values.
fn index(keys: &dyn Array, i: usize) -> Result<usize, String> {
    let k: i128 = match keys.data_type() {
        DataType::Int8 => keys.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => keys.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => keys.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => keys.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => keys.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => keys.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => keys.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => keys.as_primitive::<UInt64Type>().value(i).into(),
        other => return Err(format!("a dictionary with {other} keys")),
    };
    usize::try_from(k).map_err(|_| format!("a negative dictionary key {k}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{ListBuilder, StringBuilder, StructBuilder};
    use arrow_array::{ArrayRef, Int64Array, StringArray};
    use arrow_schema::{Field, Fields};
    use serde_json::json;

    use super::*;

    #[test]
    fn rows_read_as_json_records_without_their_null_fields() {
        let fields = Fields::from(vec![
            Field::new("role", DataType::Utf8, true),
            Field::new("content", DataType::Utf8, true),
        ]);
        let mut messages = ListBuilder::new(StructBuilder::from_fields(fields.clone(), 2));
        for (role, content) in [("user", "hi"), ("assistant", "hello")] {
            let s = messages.values();
            s.field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(role);
            s.field_builder::<StringBuilder>(1)
                .unwrap()
                .append_value(content);
            s.append(true);
        }
        messages.append(true);
        messages.append_null();
        let prompt: ArrayRef = Arc::new(StringArray::from(vec![None, Some("Q:")]));
        let id: ArrayRef = Arc::new(Int64Array::from(vec![7, 8]));
        let batch = RecordBatch::try_from_iter([
            ("messages", Arc::new(messages.finish()) as ArrayRef),
            ("prompt", prompt),
            ("id", id),
        ])
        .unwrap();
        assert_eq!(
            row_value(&batch, 0).unwrap(),
            json!({"messages": [{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "hello"}], "id": 7})
        );
        assert_eq!(
            row_value(&batch, 1).unwrap(),
            json!({"prompt": "Q:", "id": 8})
        );
    }

    #[test]
    fn a_column_of_an_unreadable_type_is_named() {
        let bin: ArrayRef = Arc::new(arrow_array::BinaryArray::from_vec(vec![b"\x00"]));
        let batch = RecordBatch::try_from_iter([("text", bin)]).unwrap();
        let e = row_value(&batch, 0).unwrap_err();
        assert!(
            e.starts_with("field `text`: a value of Arrow type Binary"),
            "{e}"
        );
    }
}
