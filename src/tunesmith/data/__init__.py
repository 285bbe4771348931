"""The data layer: read files, detect and normalize shapes, validate, and describe the data.

Never imports torch or models: it works on canonical `Record`s only.
"""

from tunesmith.data.records import (Message, Record, as_messages, as_pair, prompt_key, record_from_dict,
                                    record_to_dict)

__all__ = ["Message", "Record", "as_messages", "as_pair", "prompt_key", "record_from_dict", "record_to_dict"]
