"""Data stages: the release layout (``layout``), the sample generator (``sample``), object
storage and the embedded endpoint (``storage``), staging to Parquet (``stage``) and the Ray Data
pipeline that training reads (``pipeline``)."""
