"""fer-pipeline's data library: raw datasets -> aligned faces -> shards -> catalog -> loaders.

Importing it changes nothing around it; the entry points set their environment (`fer_cli.env`)."""
