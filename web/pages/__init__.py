"""Server-rendered pages for people, thin over the same services as the API."""
