"""Column names, dtypes and reserved ids, in one place.

Every stage reads its column names from here so that a rename is one edit. The canonical
dataset (written by ``import``/``generate``) holds raw ids; the prepared dataset (written by
``prepare``) holds contiguous item indices from the vocabulary.
"""

from __future__ import annotations

import pyarrow as pa

# --- canonical events (raw log) -------------------------------------------------------------
USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
EVENT_TYPE = "event_type"
RATING = "rating"
REQUIRED_EVENT_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP)
OPTIONAL_EVENT_COLUMNS = (EVENT_TYPE, RATING)

# Normalised event schema after validation: ids are strings so ints and strings mix safely,
# timestamps are int64 seconds since the epoch.
EVENT_SCHEMA = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(TIMESTAMP, pa.int64(), nullable=False),
        pa.field(EVENT_TYPE, pa.string()),
        pa.field(RATING, pa.float32()),
    ]
)

# --- item catalogue ---------------------------------------------------------------------------
TITLE = "title"
CATEGORIES = "categories"
ITEM_SCHEMA = pa.schema(
    [
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(TITLE, pa.string()),
        pa.field(CATEGORIES, pa.list_(pa.string())),
    ]
)

# --- canonical dataset directory layout -----------------------------------------------------
EVENTS_DIR = "events"
ITEMS_DIR = "items"

# --- vocabulary -----------------------------------------------------------------------------
PAD_INDEX = 0  # padding position; never a prediction target
MASK_INDEX = 1  # the cloze [MASK] token
NUM_SPECIAL_TOKENS = 2  # first real item index
INDEX = "index"
COUNT = "count"
VOCAB_SCHEMA = pa.schema(
    [
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(INDEX, pa.int32(), nullable=False),
        pa.field(COUNT, pa.int64(), nullable=False),
    ]
)

# --- prepared sequence dataset ---------------------------------------------------------------
ITEMS = "items"  # list<int32>: item indices, oldest first
ITEM_IDS = "item_ids"  # list<string>: raw item ids, oldest first (per-user sequences)
TIMESTAMPS = "timestamps"  # list<int64>: event times of ``items``
TARGET_ITEM = "target_item"  # int32: the held-out next item (valid/test rows)
TARGET_TIMESTAMP = "target_timestamp"  # int64: when the held-out event happened
EVENT_TYPES = "event_types"  # list<string>: event types of ``item_ids`` (null where absent)
NUM_EVENTS = "num_events"  # int64: events of this user after de-duplication
NUM_DUPLICATES = "num_duplicates"  # int64: exact duplicates dropped for this user
NUM_TRUNCATED = "num_truncated"  # int64: oldest events cut to keep ``data.max_history``
RATINGS = "ratings"  # list<float32>: ratings of ``items``/``item_ids``, null where unrated
TARGET_RATING = "target_rating"  # float32: the held-out event's rating (NaN: it has none)

TRAIN_SPLIT = "train"
VALID_SPLIT = "valid"
TEST_SPLIT = "test"
SPLITS = (TRAIN_SPLIT, VALID_SPLIT, TEST_SPLIT)

SEQUENCE_SCHEMA = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field(ITEMS, pa.list_(pa.int32()), nullable=False),
        pa.field(TIMESTAMPS, pa.list_(pa.int64()), nullable=False),
    ]
)
EVAL_SEQUENCE_SCHEMA = SEQUENCE_SCHEMA.append(
    pa.field(TARGET_ITEM, pa.int32(), nullable=False)
).append(pa.field(TARGET_TIMESTAMP, pa.int64(), nullable=False))

# One row per user with raw ids: what grouping a raw log gives (e.g. for batch recommendation).
USER_SEQUENCE_SCHEMA = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field(ITEM_IDS, pa.list_(pa.string()), nullable=False),
        pa.field(TIMESTAMPS, pa.list_(pa.int64()), nullable=False),
        pa.field(EVENT_TYPES, pa.list_(pa.string()), nullable=False),
        pa.field(NUM_EVENTS, pa.int64(), nullable=False),
        pa.field(NUM_DUPLICATES, pa.int64(), nullable=False),
        pa.field(NUM_TRUNCATED, pa.int64(), nullable=False),
        pa.field(RATINGS, pa.list_(pa.float32()), nullable=False),
    ]
)
# The prepared dataset's ``users/``: the same with vocabulary indices. Training windows and
# evaluation rows are cut from it as they are read (``recsys_dist.data.prepared``).
PREPARED_USER_SCHEMA = USER_SEQUENCE_SCHEMA.set(
    1, pa.field(ITEMS, pa.list_(pa.int32()), nullable=False)
)
USERS_DIR = "users"

# --- files of a prepared dataset and of an exported model ------------------------------------
MANIFEST_FILE = "manifest.json"
VOCAB_FILE = "vocab.parquet"
# Beside them: the sentence embeddings of item texts encoded so far (model.item_text), so a
# retraining turn over a grown catalogue encodes only the new texts. A cache: safe to delete.
ITEM_TEXT_CACHE_FILE = "item_text_cache.parquet"
# Weight formats an export may be written in besides fp32 (``recsys-dist export --quantize``;
# recsys_dist/model/quantize.py writes and reads them): here so the CLI offers them as its
# flag's choices without importing torch.
QUANTIZATION_SCHEMES = ("int8",)
