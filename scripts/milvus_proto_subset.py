#!/usr/bin/env python3
"""Writes proto/milvus/*.proto: the part of the Milvus gRPC API that Sluice answers, with the
package, service, message, field and enum names and numbers that pymilvus uses.

They are read from the protobuf descriptors the pinned pymilvus package ships (its
pymilvus/grpc_gen/*_pb2.py), starting from the RPCs in RPCS and following every message and enum
they use. Run it in a virtualenv with that pymilvus installed:

    python3 -m venv /tmp/mv && /tmp/mv/bin/pip install pymilvus==3.0.2
    /tmp/mv/bin/python scripts/milvus_proto_subset.py proto/milvus

Comments come from RPC_DOCS below (what Sluice does with each call); the rest is generated.
"""
import os
import sys

from google.protobuf import descriptor_pb2
from pymilvus.grpc_gen import common_pb2, feder_pb2, milvus_pb2, msg_pb2, rg_pb2, schema_pb2

PYMILVUS = "3.0.2"

RPCS = {
    "Connect": "Registers a client; answers with the server's identity. Sluice keeps no session.",
    "GetVersion": "The server's version string.",
    "CreateCollection": "A collection from a serialized schema.CollectionSchema: fields map onto "
    "Sluice's types (FLOAT16_VECTOR, BFLOAT16_VECTOR and INT8_VECTOR are kept as 32-bit floats; "
    "inserts, query vectors and answers use their own form; a BINARY_VECTOR, dim a multiple of 8, "
    "is kept as one float per bit and searched by HAMMING with BIN_FLAT, BIN_IVF_FLAT or "
    "AUTOINDEX, or exactly by JACCARD); the dynamic field is a JSON field; "
    "shards_num shards (0 = 1). An ARRAY field (element type BOOL, an integer, FLOAT, DOUBLE or "
    "VARCHAR; max_capacity 1-4096; max_length for VARCHAR elements) is kept as a JSON array, "
    "checked against its declaration on every write and answered as a typed ArrayArray; filters "
    "take array_contains, array_contains_any, array_contains_all, array_length and field[i]. "
    "A field's "
    "default_value (BOOL, integers, FLOAT, DOUBLE, VARCHAR) fills inserts that leave it out or "
    "give null. A partition key field (is_partition_key: INT64 or VARCHAR, not nullable) gives "
    "the collection num_partitions partitions (0: 16; at most 1024) named _default_0 … whose "
    "rows are spread by the key; writes, reads and partition DDL naming a partition are then "
    "refused, and a read whose filter pins the key (key == v or key in [...], joined by and "
    "at the top level) reads only the partitions those values go to. properties as in "
    "AlterCollection. A SPARSE_FLOAT_VECTOR field holds {index: weight} rows. functions: BM25 "
    "only, from a VARCHAR field with enable_analyzer (and analyzer_params, as RunAnalyzer "
    "takes them) to a SPARSE_FLOAT_VECTOR field, which inserts leave out (it is computed from "
    "the text) and reads never return; enable_match lets filters take TEXT_MATCH(field, "
    "'terms'[, minimum_should_match=n]) and PHRASE_MATCH(field, 'phrase'[, slop]) on the field.",
    "DropCollection": "Drops a collection and its data.",
    "HasCollection": "Whether a collection exists.",
    "DescribeCollection": "The schema, id, shards and creation time of a collection.",
    "ShowCollections": "The names (and ids) of every collection of the call's database; with "
    "authorization on, of those a grant of the caller names (by name or *), every one for root "
    "and admin holders.",
    "RenameCollection": "Renames a collection, into database newDBName when given (it must "
    "exist, and the collection must have no aliases to move); its id, data, partitions, "
    "indexes, aliases and load state stay. The new name must be free of collections and "
    "aliases; oldName must be a collection's own name, not an alias.",
    "GetCollectionStatistics": "row_count: rows inserted and not deleted, as a query sees them.",
    "LoadCollection": "Loads a collection for search and query.",
    "ReleaseCollection": "Releases a collection (search and query refuse it until loaded again).",
    "GetLoadingProgress": "100 once loaded.",
    "GetLoadState": "LoadStateLoaded, LoadStateNotLoad or LoadStateNotExist.",
    "CreateIndex": "Records an index on the vector field, metric L2, IP or COSINE: AUTOINDEX, "
    "HNSW (M, efConstruction) or FLAT; IVF_FLAT, IVF_SQ8, IVF_PQ, SCANN and DISKANN are accepted "
    "with their parameters checked and answered with HNSW (Sluice builds HNSW graphs over sealed "
    "segments; growing rows are searched exactly). On a scalar field: INVERTED or AUTOINDEX (any "
    "scalar), STL_SORT (numbers), Trie (VARCHAR), BITMAP (BOOL, integers, VARCHAR and their "
    "ARRAYs; not the primary key), or on a JSON field INVERTED with json_path and json_cast_type "
    "(one per path); checked and recorded, they change no answer (filters are evaluated over "
    "each segment's rows). On a SPARSE_FLOAT_VECTOR field: SPARSE_INVERTED_INDEX, SPARSE_WAND "
    "or AUTOINDEX by IP (drop_ratio_build, inverted_index_algo), or by BM25 on a BM25 "
    "function's output (bm25_k1, default 1.2, and bm25_b, default 0.75: the searches' "
    "parameters). Any other index type or a bad parameter is an error.",
    "DescribeIndex": "The index recorded on the collection, state Finished; total_rows and "
    "indexed_rows are the rows of its committed segments (each searched with its index, or "
    "exactly below the index's row threshold; growing rows are not counted, as in Milvus), "
    "pending_index_rows 0.",
    "DropIndex": "Forgets a recorded index (without its vector index, a field is searched exactly).",
    "AlterIndex": "Sets (extra_params) or resets (delete_keys, not both) properties of the "
    "index index_name: mmap.enabled (true or false) only, as in Milvus. It is kept and "
    "described back by DescribeIndex among the index's params; Sluice keeps its indexes in "
    "memory either way. Other keys are refused; an unknown index is IndexNotExist.",
    "CreatePartition": "Adds a partition (a name of [A-Za-z0-9_], not starting with a digit; at "
    "most 1024 per collection); writes may name it once this returns. An existing name is no "
    "change.",
    "DropPartition": "Drops a partition and its rows (growing and sealed). A partition that does "
    "not exist is no change; the default partition cannot be dropped.",
    "HasPartition": "Whether the collection has a partition of that name.",
    "ShowPartitions": "The collection's partitions, the default one first.",
    "LoadPartitions": "Loads the partitions named (a released collection is loaded with only "
    "those).",
    "ReleasePartitions": "Reads skip the partitions named (naming one is PartitionNotLoaded, "
    "201) until they are loaded again; releasing every partition releases the collection.",
    "CreateAlias": "Another name for a collection, taken by every call that names one except "
    "DropCollection (unique among collection names and aliases). An alias the collection has "
    "already is no change.",
    "AlterAlias": "Points an existing alias at another collection; readers switch at once.",
    "DropAlias": "Removes an alias (one that does not exist is no change).",
    "DescribeAlias": "The collection an alias names (AliasNotFound, 1600, if none).",
    "ListAliases": "The aliases of a collection.",
    "Insert": "Columnar rows (FieldData) routed to the collection's shards by primary key; "
    "INT8 and INT16 values are checked against their width, ARRAY values against their "
    "declaration.",
    "Upsert": "A delete of the given primary keys followed by an insert of the rows. With "
    "partial_update (or an ARRAY_APPEND / ARRAY_REMOVE in field_ops), each row keeps its stored "
    "values (read at STRONG consistency) of the fields and dynamic keys it leaves out; a key with "
    "no row is a new row; field_ops append the given elements to the stored array or remove every "
    "equal element.",
    "Delete": "Deletes by primary key (`id in [...]`) or by any filter (the matching keys are "
    "looked up first).",
    "Search": "Nearest neighbours of each query vector (or of the vectors of the rows named by "
    "primary key, `ids`; a key with no row is an error) with a filter, output fields, limit, "
    "offset and metric; ids, distances and fields in SearchResultData. A collection with "
    "several vector fields is searched on the one named by anns_field, with its index's "
    "metric. session_ts is the timestamp the search read the collection at; a request marked "
    "`iterator` reads as of its guarantee_timestamp (an iterator's pages see one snapshot). "
    "pymilvus's search iterator (search_iter_v2, search_iter_batch_size, search_iter_last_bound, "
    "search_iter_id) gets pages of the nearest hits strictly past the last bound, at most 16384 "
    "hits deep, with search_iterator_v2_results (token, last_bound). A BM25 function's output "
    "field is searched with text placeholders (VarChar): each text is split by the input "
    "field's analyzer and rows are scored by Okapi BM25 with the term statistics of every row "
    "inserted into their shard. function_score with one decay ranker (a RERANK function, "
    "reranker decay, function gauss, exp or linear, origin, scale, offset, decay, on one "
    "numeric non-nullable field) reranks the nearest limit + offset hits by their similarity "
    "(L2 as 1 - 2 atan(d)/pi) times the decay; other function scores are refused.",
    "HybridSearch": "Several searches (each its own vector field, query vectors, filter and "
    "limit) fused into one ranking per query vector: RRF (k) or weighted (weights, one per "
    "search; scores normalized to 0..1, L2 always, IP and COSINE unless norm_score is false); "
    "limit, offset, "
    "round_decimal and output fields as in Search. function_score with one RERANK function "
    "fuses instead: reranker rrf (k, default 60) or weighted (weights, norm_score, default "
    "false) as the rank params do, or a decay ranker (as in Search), which ranks every hit of "
    "the searches by its best score times the decay. "
    "Grouping is refused.",
    "Query": "Rows matching a filter (limit, offset, output fields), or count(*). session_ts "
    "is the timestamp the query read the collection at; a request marked `iterator` reads as "
    "of its guarantee_timestamp (a query iterator's pages see one snapshot).",
    "Flush": "Seals the collection's growing segments into Parquet.",
    "GetFlushState": "True once the flush has been written.",
    "AllocTimestamp": "A timestamp from Sluice's oracle.",
    "CreateDatabase": "A database: a namespace of collections and aliases. A call's database "
    "is its db_name field, else its `dbname` header (what pymilvus's db_name= and use_database "
    "send), else `default`; a call naming one that does not exist is DatabaseNotFound (800). "
    "Properties acted on: database.max.collections (one collection more is refused, code 102), "
    "database.force.deny.writing / database.force.deny.reading (true: inserts, upserts, deletes "
    "/ searches and queries are refused, code 9), database.replica.number (replicas of a load "
    "naming none), database.diskQuota.mb (inserts and upserts are refused, code 9, while the "
    "database's flushed segment files hold more MB); others are kept and described. A name in "
    "use is an error.",
    "DropDatabase": "Drops a database without collections (one with collections, or "
    "`default`, is an error; one that does not exist is no change).",
    "AlterDatabase": "Sets properties (and removes delete_keys) of a database, `default` too; "
    "a value a property acted on does not take is an error.",
    "ListDatabases": "Every database: `default` first, then by name, with ids and creation "
    "times.",
    "DescribeDatabase": "A database's id, creation time and properties (an empty name is "
    "`default`); one that does not exist is DatabaseNotFound (800).",
    "GetPartitionStatistics": "row_count of one partition: its rows inserted and not deleted, "
    "as a query sees them.",
    "FlushAll": "Flush of every collection (as Flush each); flush_all_ts is the newest "
    "timestamp of the seals.",
    "GetFlushAllState": "True: FlushAll answers once every shard sealed its segments.",
    "GetPersistentSegmentInfo": "The collection's segments in Parquet (committed manifests): id, "
    "partition, rows written (deletes are separate files), state Flushed, level L1.",
    "CheckHealth": "Healthy when the coordinator answers (catalog read) and the timestamp oracle "
    "allocates; otherwise not, with the reason.",
    "AlterCollection": "Sets and deletes collection properties (drop_collection_properties "
    "deletes). collection.ttl.seconds is a time to live: reads skip rows inserted at least that "
    "long before the read's timestamp. collection.insertRate.max.mb, upsertRate.max.mb, "
    "deleteRate.max.mb (MB of request a second), queryRate.max.qps and searchRate.max.vps "
    "(query vectors a second) limit the collection's calls through each front (a call beyond "
    "is refused with the retriable code 8 and writes nothing; negative: no limit). "
    "collection.replica.number is the replicas of a load naming none. "
    "collection.diskProtection.diskQuota.mb refuses inserts and upserts (code 9) while the "
    "collection's flushed segment files hold more MB. Other rate limits and disk protection "
    "keys, resource "
    "groups, partition-key isolation and dynamicfield.enabled are refused; any other key "
    "(mmap.enabled, collection.autocompaction.enabled, a user's own) is kept and described back "
    "with no effect on Sluice. Properties given to CreateCollection are taken the same way.",
    "AddCollectionField": "Adds a nullable scalar field (BOOL, INT8-64, FLOAT, DOUBLE, VARCHAR, "
    "JSON; no default value) to a collection: rows written before read it as null, inserts "
    "after the answer may carry it. pymilvus tries AlterCollectionSchema first, which Sluice "
    "answers UNIMPLEMENTED, and then this.",
    "TruncateCollection": "Empties a collection: every row written before the call goes "
    "(growing and sealed; reads after the answer see none of them), while its schema, "
    "partitions, indexes, aliases, properties and load state stay. Each partition gets a new "
    "id underneath (Sluice's coordinator TruncateCollection).",
    "AlterCollectionField": "Changes a field's properties (field_params): max_length of a "
    "VARCHAR field that is not the primary key (it only grows, 1-65535, so rows written before "
    "stay valid; a value up to the new limit is accepted once this returns), max_capacity of an "
    "ARRAY field (1-4096; inserts are checked against it from then on), mmap.enabled of any "
    "field (true or false; described among the field's params, reset by delete_keys; Sluice "
    "keeps field data in memory either way). Any other key, an ARRAY's max_length, or any "
    "property of the primary key is refused and changes nothing.",
    "GetReplicas": "The replicas of a loaded collection (CollectionNotLoaded, 101, if released): "
    "Sluice's replica r of every shard is replica r here; each shard's leader is the node "
    "serving that delegator (replica 0: the streaming node owning the shard's WAL; 1..: query "
    "workers). partition_ids are the loaded partitions; one resource group, "
    "__default_resource_group.",
    "GetQuerySegmentInfo": "The collection's sealed segments as reads see them: every committed "
    "segment of a loaded partition, state Sealed, with the node holding it (its query worker, "
    "else the streaming node owning its shard). Growing rows are not listed.",
    "ManualCompaction": "Compacts the collection (Coordinator.Compact): each shard's segments "
    "are rewritten without the rows that deletes already flushed to delete files, or the "
    "collection's TTL, removed as of now (flush first to include recent deletes). The whole "
    "collection is compacted whatever partition_id, channel or segment_ids narrow it to (reads "
    "see the same rows either way), and target_size is not used (segments are rewritten one "
    "by one, never merged); majorCompaction (clustering compaction) is refused: Sluice has no "
    "clustering key. compactionID follows it; compactionPlanCount is the shard count.",
    "GetCompactionState": "Executing until every shard of the compaction is done, then "
    "Completed (also when the collection was dropped meanwhile); executingPlanNo and "
    "completedPlanNo count shards. Compactions are remembered for a day.",
    "GetCompactionStateWithPlans": "As GetCompactionState, with one merge info per segment "
    "rewritten: the segment keeps its id (sources [id], target id), its channel, type "
    "CompactionTypeSingle, state CompactionTaskStateCompleted, trigger_id the compaction. "
    "With no compactionID but a collection (collection_name, or collection_id): every "
    "compaction of the collection still remembered, oldest first, their merge infos together; "
    "Executing while any of them is.",
    "CreateCredential": "A user (username: 1-32 of [A-Za-z0-9_], starting with a letter; "
    "password: base64 of 6-256 bytes), kept with a salted PBKDF2 hash of its password. Users, "
    "roles and grants are kept whether or not authorization is on (milvus_authorization): when "
    "it is, every call but CheckHealth, GetComponentStates and GetVersion carries `authorization` metadata, the "
    "base64 of user:password (pymilvus token= or user=/password=) — without a known user and "
    "its password the call is UNAUTHENTICATED and does nothing — and needs the privilege "
    "Milvus names for it on its object (the collection, or the database) from a role of the "
    "user or `public`; else PERMISSION_DENIED. root (password Milvus until changed) and "
    "holders of admin may do everything.",
    "UpdateCredential": "Sets a user's password: oldPassword must be its password unless the "
    "caller is root or holds admin (both base64). A user may change its own.",
    "DeleteCredential": "Drops a user (root cannot be dropped).",
    "ListCredUsers": "Every user's name, root first.",
    "CreateRole": "A role (name: 1-32 of [A-Za-z0-9_], not starting with a digit). admin and "
    "public always exist.",
    "DropRole": "Drops a role given to no user (force_drop: taken from its users first); admin "
    "and public cannot be dropped.",
    "OperateUserRole": "Gives a user a role (AddUserToRole) or takes it (RemoveUserFromRole).",
    "SelectRole": "One role (or every one) and, with include_user_info, its users.",
    "SelectUser": "One user (or every one) and, with include_role_info, its roles.",
    "OperatePrivilege": "Grants a role a privilege (a built-in or custom privilege group, All "
    "or *) on "
    "an object (Global, Collection or User; object_name * for any) in db_name (* for any; "
    "empty: default), or revokes it.",
    "OperatePrivilegeV2": "OperatePrivilege with the object from the privilege's level: a "
    "collection-level one on collection_name, a database- or cluster-level one on every object "
    "(cluster level: in every database).",
    "CreatePrivilegeGroup": "A custom privilege group (a role's name rule; not a privilege's "
    "or built-in group's name), empty; a grant may name it as its privilege.",
    "DropPrivilegeGroup": "Drops a custom privilege group no role's grant names.",
    "ListPrivilegeGroups": "Every privilege group: the nine built-in ones (CollectionReadOnly … "
    "ClusterAdmin), then the custom ones by name, with their privileges.",
    "OperatePrivilegeGroup": "Adds privileges (single ones, not groups) to a custom group or "
    "removes them.",
    "BackupRBAC": "Every user (password: Sluice's hash, pbkdf2-sha256$rounds$salt$hash in "
    "base64; empty for a root whose password never changed), role, grant and custom privilege "
    "group.",
    "RestoreRBAC": "Merges a BackupRBAC answer: groups, roles and users that do not exist are "
    "created (users with their hash; root takes its hash only while its password never "
    "changed), privileges, grants and roles join; nothing is taken away. Checked whole first "
    "(a password Sluice did not hash, e.g. a Milvus backup's, is an error): on error nothing "
    "changes.",
    "SelectGrant": "A role's grants, those of one object type and name when the entity names "
    "them.",
    "GetIndexState": "The state of a collection's index (by field_name or index_name): "
    "Finished, as DescribeIndex says (no segment waits for a build).",
    "GetIndexBuildProgress": "indexed_rows and total_rows of a collection's index, as "
    "DescribeIndex says (the committed segments' rows).",
    "GetIndexStatistics": "DescribeIndex's answer for index_name (empty: every index).",
    "BatchDescribeCollection": "DescribeCollection of each collection named (collection_name) "
    "or given by id (collectionID), in order; one that fails fails the call.",
    "GetComponentStates": "This front's state (role Proxy): Healthy when the coordinator's "
    "catalog and timestamp oracle answer (as CheckHealth), else Abnormal.",
    "RunAnalyzer": "The terms each text (placeholder: UTF-8 strings) splits into, by "
    "analyzer_params (a JSON object as a field's; empty: the standard analyzer) or by the "
    "analyzer of field_name of collection_name (a VARCHAR field with enable_analyzer). "
    "with_hash adds each term's 32-bit id (its key in a BM25 function's output); with_detail "
    "adds byte offsets and positions. analyzer_names (multi-language analyzers) is refused.",
}

SERVICE = "milvus.proto.milvus.MilvusService"

# Every descriptor pymilvus ships, by full name.
FILES = {}
for mod in (common_pb2, schema_pb2, msg_pb2, feder_pb2, rg_pb2, milvus_pb2):
    fdp = descriptor_pb2.FileDescriptorProto()
    mod.DESCRIPTOR.CopyToProto(fdp)
    FILES[fdp.name] = fdp

MESSAGES, ENUMS = {}, {}


def index(prefix, file_name, messages, enums):
    for e in enums:
        ENUMS[f"{prefix}.{e.name}"] = (file_name, e)
    for m in messages:
        full = f"{prefix}.{m.name}"
        MESSAGES[full] = (file_name, m)
        index(full, file_name, m.nested_type, m.enum_type)


for name, fdp in FILES.items():
    index(fdp.package, name, fdp.message_type, fdp.enum_type)

service = None
for fdp in FILES.values():
    for s in fdp.service:
        if f"{fdp.package}.{s.name}" == SERVICE:
            service = (fdp, s)
assert service, SERVICE
missing = set(RPCS) - {m.name for m in service[1].method}
assert not missing, f"pymilvus {PYMILVUS} has no {missing}"

needed_msgs, needed_enums = set(), set()


def need_type(full):
    full = full.lstrip(".")
    if full in ENUMS:
        needed_enums.add(full)
        return
    if full in needed_msgs:
        return
    needed_msgs.add(full)
    _, m = MESSAGES[full]
    for f in m.field:
        if f.type_name:
            need_type(f.type_name)


for m in service[1].method:
    if m.name in RPCS:
        need_type(m.input_type)
        need_type(m.output_type)
# Messages carried serialized in `bytes` fields: a search's query vectors.
for extra in ["milvus.proto.common.PlaceholderGroup"]:
    need_type(extra)

# Top-level declarations to write, per file, in their original order.
TYPE_NAMES = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: "fixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: "fixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32: "sfixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64: "sfixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: "sint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: "sint64",
}


def type_of(f):
    return f.type_name if f.type_name else TYPE_NAMES[f.type]


def write_enum(e, ind, out):
    out.append(f"{ind}enum {e.name} {{")
    if e.options.allow_alias:
        out.append(f"{ind}  option allow_alias = true;")
    for v in e.value:
        dep = " [deprecated = true]" if v.options.deprecated else ""
        out.append(f"{ind}  {v.name} = {v.number}{dep};")
    out.append(f"{ind}}}")


def write_message(full, m, ind, out):
    out.append(f"{ind}message {m.name} {{")
    maps = {n.name: n for n in m.nested_type if n.options.map_entry}
    for n in m.nested_type:
        if not n.options.map_entry:
            write_message(f"{full}.{n.name}", n, ind + "  ", out)
    for e in m.enum_type:
        write_enum(e, ind + "  ", out)
    oneofs = {}
    for f in m.field:
        if f.HasField("oneof_index") and not f.proto3_optional:
            oneofs.setdefault(f.oneof_index, []).append(f)
    written_oneofs = set()
    for f in m.field:
        opts = []
        if f.options.deprecated:
            opts.append("deprecated = true")
        opt = f" [{', '.join(opts)}]" if opts else ""
        if f.HasField("oneof_index") and not f.proto3_optional:
            if f.oneof_index in written_oneofs:
                continue
            written_oneofs.add(f.oneof_index)
            out.append(f"{ind}  oneof {m.oneof_decl[f.oneof_index].name} {{")
            for g in oneofs[f.oneof_index]:
                out.append(f"{ind}    {type_of(g)} {g.name} = {g.number};")
            out.append(f"{ind}  }}")
            continue
        entry = maps.get(f.type_name.rsplit(".", 1)[-1]) if f.type_name else None
        if entry and f.label == f.LABEL_REPEATED:
            k, v = entry.field
            out.append(f"{ind}  map<{type_of(k)}, {type_of(v)}> {f.name} = {f.number}{opt};")
            continue
        label = "repeated " if f.label == f.LABEL_REPEATED else ("optional " if f.proto3_optional else "")
        out.append(f"{ind}  {label}{type_of(f)} {f.name} = {f.number}{opt};")
    for i, o in enumerate(m.oneof_decl):
        pass
    out.append(f"{ind}}}")


def render(file_name, fdp, out_dir):
    out = [
        "// Generated by scripts/milvus_proto_subset.py from the descriptors of pymilvus "
        f"{PYMILVUS}:",
        "// the part of the Milvus API Sluice answers (see the service's comments), with Milvus's",
        "// names and field numbers so that pymilvus and other Milvus clients talk to it unchanged.",
        "// Do not edit by hand; run the script.",
        'syntax = "proto3";',
        "",
        f"package {fdp.package};",
        "",
    ]
    deps = set()
    for full in sorted(needed_msgs):
        fn, m = MESSAGES[full]
        if fn != file_name:
            continue
        for f in m.field:
            if f.type_name:
                t = f.type_name.lstrip(".")
                dep = (MESSAGES.get(t) or ENUMS.get(t))[0]
                if dep != file_name:
                    deps.add(dep)
    for full in needed_msgs:
        pass
    for d in sorted(deps):
        out.append(f'import "milvus/{os.path.basename(d)}";')
    if deps:
        out.append("")
    if fdp.options.go_package:
        pass
    for e in fdp.enum_type:
        if f"{fdp.package}.{e.name}" in needed_enums:
            write_enum(e, "", out)
            out.append("")
    for m in fdp.message_type:
        full = f"{fdp.package}.{m.name}"
        if full in needed_msgs:
            write_message(full, m, "", out)
            out.append("")
    if service[0].name == file_name:
        out.append("// The Milvus API calls Sluice answers; any other is UNIMPLEMENTED.")
        out.append(f"service {service[1].name} {{")
        for m in service[1].method:
            if m.name in RPCS:
                out.append(f"  // {RPCS[m.name]}")
                out.append(f"  rpc {m.name}({m.input_type}) returns ({m.output_type});")
        out.append("}")
        out.append("")
    path = os.path.join(out_dir, os.path.basename(file_name))
    with open(path, "w") as f:
        f.write("\n".join(out))
    print(f"wrote {path}")


def needed_in(file_name):
    return any(MESSAGES[m][0] == file_name for m in needed_msgs) or any(
        ENUMS[e][0] == file_name and e.count(".") == FILES[file_name].package.count(".") + 1
        for e in needed_enums
    )


# Enums nested in needed messages come with their message; top-level ones are written on their own.
out_dir = sys.argv[1] if len(sys.argv) > 1 else "proto/milvus"
os.makedirs(out_dir, exist_ok=True)
for name, fdp in FILES.items():
    if needed_in(name) or service[0].name == name:
        render(name, fdp, out_dir)
