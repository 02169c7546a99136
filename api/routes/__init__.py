"""One module per resource, each an `APIRouter` with its prefix and tags."""
