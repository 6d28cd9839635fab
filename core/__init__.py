"""The core both stages import: errors and exit statuses, flag declarations and config files,
atomic writes, presets. Kept free of torch so the preprocessing tools start fast."""
