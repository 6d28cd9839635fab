"""The on-disk cache of decoded frames and foreground masks (HDF5 shards and manifest.json files
under data_cache/<dataset>/<decode key>/). docs/cache.md states the format once: the layout, the
shard files, codecs, checksums, manifests, and what is current, reused or rebuilt.

    format.py     names, parameters, folders, shard names, the commands to run; CacheError (no h5py)
    codecs.py     record codecs: one JPEG per frame (from RGB or YUV 4:2:0), one zrun record per mask
    zrun.py       the zrun mask codec: numba kernels (a clip's records in one call) and a numpy twin
    integrity.py  CRC32 per record and over each shard's index; verify_shard
    writer.py     ShardWriter (temporary file + rename) and the encoding of frames into records
    manifest.py   shard metadata, the validity rules, manifest.json (read, write, scan)
    reader.py     open_cache -> CacheIndex, ClipReader: reads, checks, never writes
    stats.py      mask statistics per (lambda, m), sampled while the frames are cached
    arrays.py     write_cache_from_arrays: a whole cache from in-memory videos

Every name is importable from here (`from preprocess.cache import open_cache`), as before the split.
"""
from preprocess.cache.format import (BLOB_CHUNK_BYTES, DEFAULT_STRIDES, DEFAULT_VIDEOS_PER_SHARD, FORMAT_VERSION,
                                     MASK_FORMAT, MASK_STATS_EVERY, MASK_ZLIB_LEVEL, NAME_PATTERN, NAMED_KIND,
                                     NAMED_MASK_FORMAT, NAMED_PREFIX, STATS_CLIP_LEN, STATS_FORMAT, STATS_WINDOW_EVERY,
                                     CacheError, DecodeParams, MaskParams, MaskSet, NamedMaskSet, extract_command,
                                     frame_set_dir, import_command, mask_set_dir, named_mask_sets, old_mask_sets,
                                     shard_name, stats_dir, stats_shard_name, valid_mask_set_name)
from preprocess.cache.codecs import (LEGACY_MASK_CODEC, MASK_CODEC, MASK_CODECS, RecordError, decode_frame,
                                     decode_mask, decode_masks, encode_frame, encode_frame_yuv, encode_mask)
from preprocess.cache.integrity import (BLOBS, INDEX_CRC_ATTR, NO_CHECKSUMS, VERIFY_SLICE_BYTES, ShardCheck,
                                        _canonical, _shard_kind, check_index, frames_content_hash,
                                        index_checksum, record_name,
                                        verify_shard)
from preprocess.cache.writer import (MaskStats, ShardWriter, VideoRecord, _BlobWriter, _tmp_path, diff_streams,
                                     encode_video, encode_yuv_video, mask_chunk, software_versions)
from preprocess.cache.manifest import (REBUILD_HINT, ShardInfo, _atomic_write_text, _manifest_digest,
                                       _scan_mask_shards, _write_manifest, frames_shard_is_current,
                                       mask_shard_is_current, named_shard_is_current, parse_manifest, read_manifest,
                                       read_shard_info, write_frames_manifest, write_masks_manifest,
                                       write_named_manifest)
from preprocess.cache.reader import (CacheIndex, ClipReader, _check_named_set, _missing_mask_set_message,
                                     clip_stride, open_cache)
from preprocess.cache.stats import (ClipStatsSampler, cached_stats_params, merge_stats, read_shard_stats, read_stats,
                                    shard_stats_stale, stats_means, stats_text, write_shard_stats,
                                    write_stats_manifest)
from preprocess.cache.arrays import write_cache_from_arrays
