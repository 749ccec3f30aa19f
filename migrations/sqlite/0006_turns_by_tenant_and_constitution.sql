-- Which constitutions a tenant's turns were judged under: the documents that tenant may read by hash.
CREATE INDEX turns_by_tenant_and_constitution ON turns (tenant, constitution_hash);
