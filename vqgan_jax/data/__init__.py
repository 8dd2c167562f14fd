"""The one input pipeline every job reads. `input_pipeline` is the entry point (train stream,
eval pass, config fields and checks); `sources` (embedded photos, TFDS, folders), `pipeline`
(the tf.data graphs) and `preprocess` (decode, resize, crop, flip) are its building blocks;
`embedded` holds the bundled default photos, `folder` and `tfds_data` find datasets on disk."""
