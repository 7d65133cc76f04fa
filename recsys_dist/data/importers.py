"""Import public interaction logs into the canonical dataset directory.

Every later stage reads one layout (``events/`` and ``items/`` Parquet parts with the columns of
:mod:`recsys_dist.schema`), so each source format is converted here once. Inputs are streamed in
blocks and written in bounded Parquet parts, so a log larger than memory imports the same way
as MovieLens-100K. Bad values stop the import with a :class:`DataFormatError` that names the
file, the line (or row) and the field, because a silently dropped or mis-parsed column would
only show up much later as a strange metric. Inputs and the output directory may be local or
``s3://`` (every file is opened through :mod:`recsys_dist.storage`).
"""

from __future__ import annotations

import csv
import io
import logging
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsys_dist import schema, storage
from recsys_dist.errors import MissingInputError, OutputExistsError, UserInputError

logger = logging.getLogger(__name__)

FORMATS = ("recbole", "movielens", "sasrec", "csv", "parquet")
ROWS_PER_FILE = 1_000_000  # rows per written Parquet part
ROW_GROUP_SIZE = 131_072  # rows per Parquet row group (and per streamed Parquet batch)
BLOCK_BYTES = 16 << 20  # bytes of delimited text parsed at a time
DOUBLE_COLON_BLOCK_BYTES = 8 << 20  # bytes of whole lines per block of a '::' file
_UNIT_DIVISORS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_CANONICAL = schema.REQUIRED_EVENT_COLUMNS + schema.OPTIONAL_EVENT_COLUMNS
_ZONE_SUFFIX = r"(Z|[+-]\d\d:?\d\d)$"
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


class DataFormatError(UserInputError):
    """A value or column in an input file that cannot be converted.

    The message reads ``FILE line N: field 'F': what is wrong``. For text files N is the
    physical line number as an editor shows it (header line included, so ``sed -n Np FILE``
    prints the offending line; quoted fields spanning lines are not counted). For Parquet the
    location is ``row N``: the 1-based row within that file.
    """

    def __init__(
        self,
        source: str,
        message: str,
        *,
        number: int | None = None,
        field: str | None = None,
        unit: str = "line",
    ) -> None:
        where = source if number is None else f"{source} {unit} {number}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")
        self.source, self.number, self.field = source, number, field


@dataclass
class ImportSummary:
    """What :func:`import_dataset` wrote."""

    output: str
    format: str
    events: int
    items: int
    files_written: int


@dataclass
class _Chunk:
    """A block of input rows renamed to canonical columns, still in their source types."""

    table: pa.Table
    source: str
    numbers: np.ndarray  # line (or row) number of every row, for error messages
    unit: str = "line"

    def error(self, index: int, field: str, message: str) -> DataFormatError:
        number = int(self.numbers[index])
        return DataFormatError(self.source, message, number=number, field=field, unit=self.unit)


@dataclass
class _Plan:
    events: Iterator[_Chunk]
    items: Iterator[pa.Table] | None = None


# --- output -----------------------------------------------------------------------------------
class PartWriter:
    """Streams tables into ``part-NNNNN.parquet`` files of at most ``rows_per_file`` rows.

    Buffers at most one row group, so memory stays bounded whatever the input size. Used as a
    context manager it deletes its own files when the import fails, leaving no half dataset.
    """

    def __init__(
        self,
        directory: str,
        table_schema: pa.Schema,
        rows_per_file: int | None = None,
        row_group_size: int | None = None,
    ) -> None:
        self.directory = str(directory)
        self.schema = table_schema
        self.rows_per_file = rows_per_file or ROWS_PER_FILE  # read at call time: tests shrink it
        self.row_group_size = row_group_size or ROW_GROUP_SIZE
        self.rows = 0
        self.files: list[str] = []
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self._file_rows = 0

    def write(self, table: pa.Table) -> None:
        self._buffer.append(table)
        self._buffered += table.num_rows
        if self._buffered >= self.row_group_size:
            self._flush(final=False)

    def close(self) -> None:
        self._flush(final=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        if self._writer is not None:
            self._writer.close()
        for path in self.files:
            storage.delete_file(path)

    def _flush(self, final: bool) -> None:
        table = pa.concat_tables(self._buffer) if self._buffer else self.schema.empty_table()
        start = 0
        while table.num_rows - start >= self.row_group_size or (final and start < table.num_rows):
            if self._writer is None or self._file_rows >= self.rows_per_file:
                self._open_next()
            size = min(self.row_group_size, self.rows_per_file - self._file_rows)
            piece = table.slice(start, size)
            self._writer.write_table(piece, row_group_size=self.row_group_size)
            self._file_rows += piece.num_rows
            self.rows += piece.num_rows
            start += piece.num_rows
        rest = table.slice(start)
        self._buffer, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def _open_next(self) -> None:
        if self._writer is not None:
            self._writer.close()
        storage.make_dirs(self.directory)
        path = storage.join(self.directory, f"part-{len(self.files):05d}.parquet")
        self.files.append(path)
        fs, inner = storage.resolve(path)
        self._writer = pq.ParquetWriter(inner, self.schema, filesystem=fs)
        self._file_rows = 0


def check_output_dir(output_dir: str, subdirs: tuple[str, ...], overwrite: bool) -> None:
    """Refuse an output whose ``subdirs`` hold an earlier run's parts, unless ``overwrite``
    (cheap, so a command can check before it starts any work)."""
    if overwrite:
        return
    for name in subdirs:
        sub = storage.join(output_dir, name)
        if not storage.is_empty_dir(sub):
            raise OutputExistsError(
                f"{sub} is not empty; pass --overwrite (overwrite=True) to replace it"
            )


def prepare_output_dir(output_dir: str, subdirs: tuple[str, ...], overwrite: bool) -> str:
    """Refuse to mix new parts with an earlier run's, unless asked to replace them."""
    check_output_dir(output_dir, subdirs, overwrite)
    if overwrite:
        for name in subdirs:
            storage.delete_dir(storage.join(output_dir, name))
    storage.make_dirs(output_dir)
    return str(output_dir)


# --- entry point ------------------------------------------------------------------------------
def import_dataset(
    fmt: str,
    input_path: str,
    output_dir: str,
    column_map: dict[str, str] | None = None,
    delimiter: str = ",",
    timestamp_unit: str = "s",
    *,
    overwrite: bool = False,
) -> ImportSummary:
    """Convert ``input_path`` in format ``fmt`` into the canonical dataset at ``output_dir``.

    Args:
        fmt: one of :data:`FORMATS`.
        input_path: a file or directory, as each format expects (see the ``_plan_*`` readers).
        output_dir: receives ``events/`` and, when the input has item metadata, ``items/``.
        column_map: canonical name -> source column (``csv``, ``parquet`` and ``recbole``).
        delimiter: field separator of ``csv`` input.
        timestamp_unit: unit of numeric timestamps ("s", "ms", "us" or "ns").
        overwrite: replace existing ``events/``/``items/`` parts instead of refusing.
    """
    if fmt not in _PLANNERS:
        raise UserInputError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    if timestamp_unit not in _UNIT_DIVISORS:
        raise UserInputError(
            f"timestamp unit {timestamp_unit!r}; expected one of {list(_UNIT_DIVISORS)}"
        )
    column_map = dict(column_map or {})
    unknown = set(column_map) - set(_CANONICAL)
    if unknown:
        raise UserInputError(
            f"column map (--map) keys {sorted(unknown)} are not among {list(_CANONICAL)}"
        )
    if fmt != "csv" and delimiter != ",":
        raise UserInputError(f"--delimiter applies to the csv format only, not {fmt!r}")
    if column_map and fmt in ("movielens", "sasrec"):
        raise UserInputError(f"format {fmt!r} has a fixed layout; --map is not accepted")
    plan = _PLANNERS[fmt](str(input_path), column_map, delimiter)
    root = prepare_output_dir(output_dir, (schema.EVENTS_DIR, schema.ITEMS_DIR), overwrite)
    divisor = _UNIT_DIVISORS[timestamp_unit]
    with PartWriter(storage.join(root, schema.EVENTS_DIR), schema.EVENT_SCHEMA) as events:
        for chunk in plan.events:
            events.write(_to_events(chunk, divisor))
    files, n_items = len(events.files), 0
    if plan.items is not None:
        with PartWriter(storage.join(root, schema.ITEMS_DIR), schema.ITEM_SCHEMA) as items:
            for table in plan.items:
                items.write(table)
        files, n_items = files + len(items.files), items.rows
    summary = ImportSummary(str(output_dir), fmt, events.rows, n_items, files)
    logger.debug("imported %s", summary)
    return summary


# --- delimited text ---------------------------------------------------------------------------
def _text_options(delimiter: str, quoted: bool, encoding: str, names: list[str] | None, skip: int):
    read = pacsv.ReadOptions(
        column_names=names, skip_rows=skip, block_size=BLOCK_BYTES, encoding=encoding
    )
    parse = pacsv.ParseOptions(
        delimiter=delimiter, quote_char='"' if quoted else False, ignore_empty_lines=False
    )
    return read, parse


def _header(path: str, delimiter: str, quoted: bool, encoding: str = "utf8") -> list[str]:
    read, parse = _text_options(delimiter, quoted, encoding, None, 0)
    read.block_size = 1 << 20
    try:
        with (
            storage.open_input(path) as source,
            pacsv.open_csv(source, read_options=read, parse_options=parse) as reader,
        ):
            return list(reader.schema.names)
    except pa.ArrowInvalid as exc:
        number = _find_bad_line(path, delimiter, quoted, encoding)
        raise DataFormatError(str(path), str(exc), number=number) from exc


def _iter_text(
    path: str,
    columns: dict[str, str],
    delimiter: str,
    *,
    names: list[str] | None = None,
    header_lines: int = 1,
    quoted: bool = False,
    encoding: str = "utf8",
) -> Iterator[_Chunk]:
    """Stream ``path`` as string columns, renamed canonical <- source by ``columns``.

    ``names`` gives the column names of a header-less file (or replaces a header that is
    skipped, as RecBole's ``field:type`` one is).
    """
    skip = header_lines if names is not None else 0
    read, parse = _text_options(delimiter, quoted, encoding, names, skip)
    convert = pacsv.ConvertOptions(
        include_columns=list(columns.values()),
        column_types={src: pa.string() for src in columns.values()},
        strings_can_be_null=True,
        null_values=[""],
    )
    seen = 0
    try:
        with (
            storage.open_input(path) as source,
            pacsv.open_csv(source, read, parse, convert) as reader,
        ):
            for batch in reader:
                table = pa.Table.from_batches([batch]).rename_columns(list(columns))
                numbers = np.arange(seen, seen + batch.num_rows) + header_lines + 1
                seen += batch.num_rows
                yield _drop_blank(_Chunk(table, str(path), numbers))
    except pa.ArrowInvalid as exc:
        number = _find_bad_line(path, delimiter, quoted, encoding)
        raise DataFormatError(str(path), f"{exc}", number=number) from exc


def _find_bad_line(path: str, delimiter: str, quoted: bool, encoding: str) -> int | None:
    """Locate a row whose field count differs from the first row's (error path only)."""
    quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    with _open_text(path, encoding) as handle:
        rows = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        width = None
        for row in rows:
            if not row:
                continue
            width = width or len(row)
            if len(row) != width:
                return rows.line_num
    return None


def _drop_blank(chunk: _Chunk) -> _Chunk:
    """Blank lines parse as all-null rows; drop them but keep the others' line numbers."""
    table = chunk.table
    if table.num_columns == 0 or table.num_rows == 0:
        return chunk
    blank = pc.is_null(table.column(0))
    for column in table.columns[1:]:
        blank = pc.and_(blank, pc.is_null(column))
    if not pc.any(blank).as_py():
        return chunk
    keep = pc.invert(blank)
    numbers = chunk.numbers[keep.to_numpy(zero_copy_only=False)]
    return _Chunk(table.filter(keep), chunk.source, numbers, chunk.unit)


def _resolve_columns(
    source: str, available: list[str], column_map: dict[str, str]
) -> dict[str, str]:
    """canonical -> source column for every canonical field the input has."""
    columns = {}
    for name in _CANONICAL:
        src = column_map.get(name, name)
        if src in available:
            columns[name] = src
        elif name in schema.REQUIRED_EVENT_COLUMNS or name in column_map:
            mapped = f" (mapped to column '{src}')" if src != name else ""
            raise DataFormatError(
                source, f"missing required field '{name}'{mapped}; available columns: {available}"
            )
    return columns


# --- formats ----------------------------------------------------------------------------------
def _plan_csv(path: str, column_map: dict[str, str], delimiter: str) -> _Plan:
    """A delimited file with a header, or a directory of ``*.csv`` files."""
    files = _list_files(path, ".csv", recursive=False)

    def events() -> Iterator[_Chunk]:
        for file in files:
            columns = _resolve_columns(str(file), _header(file, delimiter, True), column_map)
            yield from _iter_text(file, columns, delimiter, quoted=True)

    return _Plan(events())


def _plan_parquet(path: str, column_map: dict[str, str], delimiter: str) -> _Plan:
    """Parquet file(s): a file, or every ``*.parquet`` below a directory."""
    files = _list_files(path, ".parquet", recursive=True)

    def events() -> Iterator[_Chunk]:
        for file in files:
            with storage.open_input(file) as source:
                parquet = pq.ParquetFile(source)
                columns = _resolve_columns(file, parquet.schema_arrow.names, column_map)
                seen = 0
                for batch in parquet.iter_batches(ROW_GROUP_SIZE, columns=list(columns.values())):
                    table = pa.Table.from_batches([batch]).rename_columns(list(columns))
                    numbers = np.arange(seen + 1, seen + 1 + batch.num_rows)
                    seen += batch.num_rows
                    yield _Chunk(table, file, numbers, unit="row")

    return _Plan(events())


def _plan_recbole(path: str, column_map: dict[str, str], delimiter: str) -> _Plan:
    """RecBole atomic files: ``NAME.inter`` (+ ``NAME.item``), tab-separated, ``field:type``."""
    inter = path if storage.is_file(path) else _single(path, ".inter")
    names = _recbole_header(inter)
    columns = _resolve_columns(inter, names, column_map)
    events = _iter_text(inter, columns, "\t", names=names)
    item_file = posixpath.splitext(inter)[0] + ".item"
    items = _recbole_items(item_file, column_map) if storage.exists(item_file) else None
    return _Plan(events, items)


def _recbole_header(path: str) -> list[str]:
    with _open_text(path, "utf8") as handle:
        first = handle.readline().rstrip("\r\n")
    return [field.split(":", 1)[0] for field in first.split("\t")]


def _recbole_items(path: str, column_map: dict[str, str]) -> Iterator[pa.Table]:
    names = _recbole_header(path)
    item_col = column_map.get(schema.ITEM_ID, schema.ITEM_ID)
    if item_col not in names:
        raise DataFormatError(str(path), f"missing field '{item_col}'; available: {names}")
    columns = {schema.ITEM_ID: item_col}
    title = _first_present(names, ("title", "movie_title", "name", "item_name"))
    genres = _first_present(names, ("categories", "class", "genre", "genres"))
    columns.update({k: v for k, v in ((schema.TITLE, title), (schema.CATEGORIES, genres)) if v})
    for chunk in _iter_text(path, columns, "\t", names=names):
        table = chunk.table
        titles = table.column(schema.TITLE) if title else None
        cats = pc.utf8_split_whitespace(table.column(schema.CATEGORIES)) if genres else None
        yield _item_table(chunk, titles, cats)


def _plan_movielens(path: str, column_map: dict[str, str], delimiter: str) -> _Plan:
    """GroupLens files: ``u.data`` (+ ``u.item``) or ``ratings.dat`` (+ ``movies.dat``)."""
    folder = storage.parent(path) if storage.is_file(path) else path
    names = [schema.USER_ID, schema.ITEM_ID, schema.RATING, schema.TIMESTAMP]
    columns = {name: name for name in names}
    u_data, u_item = storage.join(folder, "u.data"), storage.join(folder, "u.item")
    if storage.exists(u_data):
        events = _iter_text(u_data, columns, "\t", names=names, header_lines=0)
        items = _ml100k_items(u_item) if storage.exists(u_item) else None
        return _Plan(events, items)
    ratings, movies = storage.join(folder, "ratings.dat"), storage.join(folder, "movies.dat")
    if storage.exists(ratings):
        events = _iter_double_colon(ratings, names, "latin-1")
        return _Plan(events, _ml1m_items(movies) if storage.exists(movies) else None)
    raise MissingInputError(f"{folder}: expected u.data or ratings.dat (MovieLens layout)")


def _ml100k_items(path: str) -> Iterator[pa.Table]:
    """``u.item``: id|title|release|video release|url|19 genre flags, latin-1."""
    names = [schema.ITEM_ID, "title", "release", "video", "url", *ML100K_GENRES]
    columns = {name: name for name in names}
    for chunk in _iter_text(path, columns, "|", names=names, header_lines=0, encoding="latin-1"):
        flags = np.stack(
            [
                pc.equal(chunk.table.column(g), "1").fill_null(False).to_numpy()
                for g in ML100K_GENRES
            ],
            axis=1,
        )  # [rows, genres]
        offsets = np.concatenate([[0], np.cumsum(flags.sum(axis=1))]).astype(np.int32)
        values = np.broadcast_to(np.array(ML100K_GENRES), flags.shape)[flags]
        categories = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.string()))
        yield _item_table(chunk, chunk.table.column("title"), categories)


def _ml1m_items(path: str) -> Iterator[pa.Table]:
    """``movies.dat``: MovieID::Title::Genres with '|'-separated genres, latin-1."""
    for chunk in _iter_double_colon(path, [schema.ITEM_ID, "title", "genres"], "latin-1"):
        genres = pc.split_pattern(chunk.table.column("genres"), "|")
        yield _item_table(chunk, chunk.table.column("title"), genres)


def _iter_double_colon(path: str, names: list[str], encoding: str) -> Iterator[_Chunk]:
    """Stream a ``::``-separated file: blocks of lines, '::' swapped for a 1-byte separator."""
    with io.BufferedReader(storage.open_input(path)) as handle:
        seen = 0
        while lines := handle.readlines(DOUBLE_COLON_BLOCK_BYTES):
            block = b"".join(lines).replace(b"::", b"\x1f")
            read = pacsv.ReadOptions(column_names=names, encoding=encoding, use_threads=False)
            parse = pacsv.ParseOptions(delimiter="\x1f", quote_char=False, ignore_empty_lines=False)
            convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
            convert.strings_can_be_null, convert.null_values = True, [""]
            try:
                table = pacsv.read_csv(io.BytesIO(block), read, parse, convert)
            except pa.ArrowInvalid as exc:
                ragged = (i for i, x in enumerate(lines) if x.strip() and _width(x) != len(names))
                bad = next(ragged, None)
                number = None if bad is None else seen + bad + 1
                message = str(exc).replace("\x1f", "::")
                raise DataFormatError(str(path), message, number=number) from exc
            numbers = np.arange(seen + 1, seen + 1 + table.num_rows)
            seen += len(lines)
            yield _drop_blank(_Chunk(table, str(path), numbers))


def _width(line: bytes) -> int:
    return line.count(b"::") + 1


def _plan_sasrec(path: str, column_map: dict[str, str], delimiter: str) -> _Plan:
    """``user item`` per line, each user's lines in time order; time = position in the user."""
    columns = {schema.USER_ID: schema.USER_ID, schema.ITEM_ID: schema.ITEM_ID}
    chunks = _iter_text(path, columns, " ", names=list(columns), header_lines=0)
    return _Plan(_with_positions(chunks))


def _with_positions(chunks: Iterator[_Chunk]) -> Iterator[_Chunk]:
    """Add ``timestamp`` = how many earlier lines the same user has (0, 1, 2, ...)."""
    counts: dict[str, int] = {}
    for chunk in chunks:
        encoded = pc.dictionary_encode(chunk.table.column(schema.USER_ID)).combine_chunks()
        index = encoded.indices.fill_null(0).to_numpy()
        users = encoded.dictionary.to_pylist()
        order = np.argsort(index, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(index[order]) != 0])
        sizes = np.diff(np.r_[starts, len(index)])
        rank = np.empty(len(index), dtype=np.int64)
        rank[order] = np.arange(len(index)) - np.repeat(starts, sizes)
        base = np.array([counts.get(user, 0) for user in users] or [0], dtype=np.int64)
        for user, n in zip(users, np.bincount(index, minlength=len(users)), strict=True):
            counts[user] = counts.get(user, 0) + int(n)
        table = chunk.table.append_column(schema.TIMESTAMP, pa.array(base[index] + rank))
        yield _Chunk(table, chunk.source, chunk.numbers, chunk.unit)


_PLANNERS: dict[str, Callable[[str, dict[str, str], str], _Plan]] = {
    "recbole": _plan_recbole,
    "movielens": _plan_movielens,
    "sasrec": _plan_sasrec,
    "csv": _plan_csv,
    "parquet": _plan_parquet,
}


def _list_files(path: str, suffix: str, recursive: bool = False) -> list[str]:
    """``path`` itself if it is a file, else its ``*suffix`` files (hidden ones skipped)."""
    if not storage.exists(path):
        raise MissingInputError(f"{path}: no such file or directory")
    files = storage.list_files(path, suffix, recursive=recursive)
    if not files:
        raise MissingInputError(f"{path}: no *{suffix} files")
    return files


def _single(path: str, suffix: str) -> str:
    files = _list_files(path, suffix)
    if len(files) > 1:
        names = [posixpath.basename(f) for f in files]
        raise UserInputError(f"{path}: expected one *{suffix} file, found {names}")
    return files[0]


def _open_text(path: str, encoding: str) -> io.TextIOWrapper:
    """Line-by-line text from a local or remote file (for headers and error locations)."""
    return io.TextIOWrapper(storage.open_input(path), encoding, errors="replace", newline="")


def _first_present(names: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((name for name in candidates if name in names), None)


# --- value conversion -------------------------------------------------------------------------
def _item_table(chunk: _Chunk, titles: pa.Array | None, categories: pa.Array | None) -> pa.Table:
    n = chunk.table.num_rows
    columns = {
        schema.ITEM_ID: _ids(chunk, schema.ITEM_ID),
        schema.TITLE: pa.nulls(n, pa.string()) if titles is None else titles.cast(pa.string()),
        schema.CATEGORIES: pa.nulls(n, pa.list_(pa.string())) if categories is None else categories,
    }
    return pa.table(columns, schema=schema.ITEM_SCHEMA)


def _to_events(chunk: _Chunk, divisor: int) -> pa.Table:
    """Convert one chunk to :data:`schema.EVENT_SCHEMA`, raising on any unusable value."""
    table, n = chunk.table, chunk.table.num_rows
    names = table.column_names
    event_type = (
        table.column(schema.EVENT_TYPE).cast(pa.string())
        if schema.EVENT_TYPE in names
        else pa.nulls(n, pa.string())
    )
    rating = (
        _numbers(chunk, schema.RATING, table.column(schema.RATING)).cast(pa.float32())
        if schema.RATING in names
        else pa.nulls(n, pa.float32())
    )
    columns = [
        _ids(chunk, schema.USER_ID),
        _ids(chunk, schema.ITEM_ID),
        _timestamps(chunk, divisor),
        event_type,
        rating,
    ]
    return pa.Table.from_arrays(columns, schema=schema.EVENT_SCHEMA)


def _require_values(chunk: _Chunk, field: str) -> pa.Array:
    values = chunk.table.column(field).combine_chunks()
    if values.null_count:
        first = int(np.argmax(values.is_null().to_numpy(zero_copy_only=False)))
        raise chunk.error(first, field, "missing value")
    return values


def _ids(chunk: _Chunk, field: str) -> pa.Array:
    """Ids become strings; integral floats (e.g. a nullable int column) lose the '.0'."""
    values = _require_values(chunk, field)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_floating(values.type):
        integral = pc.equal(pc.floor(values), values).to_numpy(zero_copy_only=False)
        if not integral.all():
            bad = int(np.argmin(integral))
            raise chunk.error(bad, field, f"id {values[bad].as_py()!r} is not an integer")
        values = values.cast(pa.int64())
    try:
        return values.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise chunk.error(0, field, f"cannot use type {values.type} as an id") from exc


def _timestamps(chunk: _Chunk, divisor: int) -> pa.Array:
    """Seconds since the epoch from numbers (in ``divisor`` units), times or ISO-8601 text."""
    values = _require_values(chunk, schema.TIMESTAMP)
    kind = values.type
    if pa.types.is_timestamp(kind):
        return _floor_div(values.cast(pa.int64()), _UNIT_DIVISORS[kind.unit])
    if pa.types.is_date(kind):
        return values.cast(pa.timestamp("s")).cast(pa.int64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        numeric = _try_cast(values, pa.int64())
        if numeric is None:
            numeric = _try_cast(values, pa.float64())
        if numeric is None:
            seconds = _parse_iso(values)
            if seconds is not None:
                return seconds
            bad = _first_bad(values, _looks_like_time)
            raise chunk.error(
                bad, schema.TIMESTAMP, f"cannot parse {values[bad].as_py()!r} as a number or time"
            )
        values = numeric
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise chunk.error(0, schema.TIMESTAMP, f"cannot use type {kind} as a timestamp")
    if pa.types.is_floating(values.type):
        finite = pc.is_finite(values).to_numpy(zero_copy_only=False)
        if not finite.all():
            bad = int(np.argmin(finite))
            raise chunk.error(bad, schema.TIMESTAMP, f"{values[bad].as_py()} is not finite")
    return _floor_div(values, divisor)


def _floor_div(values: pa.Array, divisor: int) -> pa.Array:
    array = values.to_numpy(zero_copy_only=False)
    if np.issubdtype(array.dtype, np.floating):
        return pa.array(np.floor(array / divisor).astype(np.int64))
    return pa.array(np.floor_divide(array.astype(np.int64), divisor))


def _numbers(chunk: _Chunk, field: str, values: pa.ChunkedArray) -> pa.Array:
    values = values.combine_chunks()
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return values
    parsed = _try_cast(values, pa.float64())
    if parsed is None:
        bad = _first_bad(values, lambda v: _try_cast(pa.array([v]), pa.float64()) is not None)
        raise chunk.error(bad, field, f"cannot parse {values[bad].as_py()!r} as a number")
    return parsed


def _try_cast(values: pa.Array, target: pa.DataType) -> pa.Array | None:
    try:
        return values.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _parse_iso(values: pa.Array) -> pa.Array | None:
    """ISO-8601 text to epoch seconds; text without a zone is taken as UTC."""
    zoned = pc.match_substring_regex(values, _ZONE_SUFFIX)
    with_zone = _try_cast(pc.if_else(zoned, values, None), pa.timestamp("ns", tz="UTC"))
    without = _try_cast(pc.if_else(zoned, None, values), pa.timestamp("ns"))
    if with_zone is None or without is None:
        return None
    nanos = pc.if_else(zoned, with_zone.cast(pa.int64()), without.cast(pa.int64()))
    return _floor_div(nanos, _UNIT_DIVISORS["ns"])


def _looks_like_time(value: str) -> bool:
    one = pa.array([value])
    numeric = _try_cast(one, pa.float64()) is not None
    return numeric or _parse_iso(one) is not None


def _first_bad(values: pa.Array, ok: Callable[[str], bool]) -> int:
    """Index of the first value ``ok`` rejects (error path only, so a Python loop is fine)."""
    for index, value in enumerate(values.to_pylist()):
        if value is not None and not ok(value):
            return index
    return 0
