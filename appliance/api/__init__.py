"""HTTP routers, one module per URL prefix (the seed's router layout). Routes stay thin."""
