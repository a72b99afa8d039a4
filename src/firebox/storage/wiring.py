"""Builds the storage of one process from settings."""

from __future__ import annotations

from dataclasses import dataclass

from firebox.clock import Clock
from firebox.settings import Settings
from firebox.storage.blobs import BlobStore, LocalBlobStore
from firebox.storage.signed import UrlSigner, signing_secret


@dataclass(frozen=True)
class Storage:
    """The blob store and the URL signer every upload and download goes through."""

    blobs: BlobStore
    signer: UrlSigner
    public_url: str | None  # base of signed URLs; None: the request's own base URL
    url_ttl_s: int

    def url(self, path: str, request_base: str) -> str:
        """The absolute URL of a signed ``path`` (``/v1/storage/...``)."""
        base = (self.public_url or request_base).rstrip("/")
        return f"{base}{path}"


def build_storage(settings: Settings, clock: Clock) -> Storage:
    """The local-disk store under the data dir, and the signer with the configured key."""
    secret = signing_secret(
        settings.url_signing_key.get_secret_value() if settings.url_signing_key else None,
        settings.data_dir,
    )
    return Storage(
        blobs=build_blobs(settings),
        signer=UrlSigner(secret, clock),
        public_url=settings.public_url,
        url_ttl_s=settings.signed_url_ttl_s,
    )


def build_blobs(settings: Settings) -> BlobStore:
    """The configured blob store: local disk, or an S3-compatible bucket."""
    if settings.blob_store == "s3":
        from firebox.storage.s3 import build_s3_store

        if not settings.s3_bucket:
            raise ValueError("FIREBOX_BLOB_STORE=s3 needs FIREBOX_S3_BUCKET")
        secret = settings.s3_secret_access_key
        return build_s3_store(
            bucket=settings.s3_bucket,
            cache_dir=(settings.storage_dir or settings.data_dir / "blobs") / "s3-cache",
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            prefix=settings.s3_prefix,
        )
    return LocalBlobStore(settings.storage_dir or settings.data_dir / "blobs")
