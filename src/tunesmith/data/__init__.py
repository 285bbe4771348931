"""The data layer: read files, detect and normalize shapes, validate, and describe the data.

Never imports torch or models: it works on canonical `Record`s only.
"""

from tunesmith.data.records import (Message, Record, as_messages, as_pair, prompt_key, record_from_dict,
                                    record_to_dict)
from tunesmith.data.shapes import CONVERTERS, Columns, columns_for, detect_shape
from tunesmith.data.validate import LoadedData, check_record, load_records

__all__ = ["CONVERTERS", "Columns", "LoadedData", "Message", "Record", "as_messages", "as_pair", "check_record",
           "columns_for", "detect_shape", "load_records", "prompt_key", "record_from_dict", "record_to_dict"]
