"""Validate Kafka record values against a JSON Schema with Python's `jsonschema`.

Usage: validate_records.py SCHEMA RECORDS
RECORDS is a JSON array of record values. Prints one line per invalid record and exits 1 when
any is invalid, 0 when all are valid. The reference implementation is used on purpose: it is
independent of tally's Rust code, and it needs no extra crate in tally's build.
"""

import json
import sys

import jsonschema


def main() -> int:
    schema_path, records_path = sys.argv[1], sys.argv[2]
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    with open(records_path, encoding="utf-8") as f:
        records = json.load(f)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    bad = 0
    for i, rec in enumerate(records):
        for err in validator.iter_errors(rec):
            bad += 1
            path = "/".join(str(p) for p in err.absolute_path)
            print(f"record {i}: at /{path}: {err.message}")
    print(f"{len(records)} records checked, {bad} errors", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
