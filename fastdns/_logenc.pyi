def encode_buffer(buf: bytes, upstream_names: list[str], random_bytes: bytes | None = ...) -> bytes: ...
def pack_record(
    wall_time: float,
    client_ip: str,
    query_wire: bytes,
    reply_wire: bytes,
    cache_hit: bool,
    upstream: int,
    elapsed_s: float,
) -> bytes: ...
def count_records(buf: bytes) -> int: ...
