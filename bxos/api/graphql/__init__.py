"""GraphQL at /api/graphql/: the resources of /api/v1/, nested, in one request.

Not a second API: the types are generated from the same Resource declarations, and every read
goes through the same selectors (bxos.api.views: the gate, the field profile, the filters), the
same paging (bxos.api.paging) and the same scope check (bxos.api.permissions.holds_scope). The
endpoint is a DRF view (``view``), so authentication, throttling, problem+json transport errors,
request ids and monitoring are those of the REST API.

- ``schema``: types, top-level fields and resolvers, generated from ``RESOURCES``;
- ``relations``: the nested relations (student -> incidents, incident -> student, ...);
- ``limits``: depth, alias, token and cost limits;
- ``errors``: the GraphQL errors we raise and how every error is shown to the client;
- ``view``: the endpoint.
"""
