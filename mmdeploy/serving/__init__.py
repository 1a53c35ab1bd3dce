"""What the BentoML service (mmdeploy/service.py) is made of, kept here so the service stays thin.

- bounds.py: the request bounds (window, hop, windows per request, form fields, file name length) and the
  checks that name the bound a request breaks.
- guard.py: `UploadGuard`, ASGI middleware for the upload routes: 413 before reading a body whose
  Content-Length is over the limit, 413 while streaming one that grows past it (chunked), 4xx for a missing
  `video` file field or a body that is not multipart, 400 for more than MAX_FIELDS fields, a field sent twice, a
  window/hop that is not a finite number within the bounds, or a file name with control characters or over
  MAX_NAME_BYTES; the body is spooled to disk (bounded memory) and replayed with the file part renamed
  (`bounds.disk_name`: the client's name is echoed in the answer, never used on disk).
- headers.py: `ResponseRules`, ASGI middleware over every answer: X-Content-Type-Options: nosniff, redirects
  to a path (never a URL from the Host header), and any other error answer on the upload routes rewritten to
  one JSON line `{"error": ...}`.
- remote.py: `pack` / `unpack` (a batch of (spectrogram, frames) as ONE float32 array [B, D], because a
  batchable BentoML API takes exactly one parameter) and `RemotePredictor`: looks like a runtime Predictor to
  the pipeline, but each `predict` goes to the batchable model service, so concurrent requests share model
  calls and the result JSON is built by the pipeline's own functions (one result shape for CLI and HTTP).
- answers.py: the model to serve (`model_path`: MMDEPLOY_MODEL wins, else the BentoML store tag), errors as
  JSON answers, readiness that never raises or hangs (`NotReady` / `ReadyLog`), and `Pull`: a blocking
  timeline pulled from a thread pool, closed (its decoder killed) as soon as the client goes away.
- schema.py: the OpenAPI document (answers: mmdeploy/results.py's models; the request bounds; the upload
  required) and the docs page at / (Swagger UI from this server's files, nothing loaded from elsewhere).

The knobs are mmdeploy/settings.py's (read once, by service.py).
"""
