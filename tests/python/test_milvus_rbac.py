"""pymilvus users, roles and privileges against `sluice standalone`, with authorization on
(`SLUICE_MILVUS_AUTHORIZATION=true`, Milvus's `common.security.authorizationEnabled`) and off.
milvus-lite has no users or roles, so what each call may do is checked against Milvus's rules:
a call needs its privilege on its object from a role of the user (or `public`); root and admin
holders may do everything."""

import base64
import random
import tempfile
from pathlib import Path

import grpc
import pytest
from pymilvus import MilvusClient, MilvusException

from sluice_testkit import Server

DIM = 4


def rows(n, start=0):
    rnd = random.Random(start)
    return [{"id": start + i, "vector": [rnd.random() for _ in range(DIM)]} for i in range(n)]


@pytest.fixture(scope="module")
def secured():
    with tempfile.TemporaryDirectory(prefix="sluice-rbac-") as d:
        s = Server(Path(d), env={"SLUICE_MILVUS_AUTHORIZATION": "true"})
        s.start()
        try:
            yield s
        finally:
            s.stop()


def client(server, token=None, **kw):
    return MilvusClient(uri=f"http://{server.milvus}", token=token, **kw)


def refused(call, *words):
    """`call` fails saying `words`: a Milvus error, or (as Milvus answers a call it does not
    authenticate or authorize) a gRPC one."""
    with pytest.raises((MilvusException, grpc.RpcError)) as e:
        call()
    for w in words:
        assert w in str(e.value), (w, e.value)
    return e.value


def test_calls_without_a_known_user_and_password_are_refused_and_change_nothing(secured):
    root = client(secured, "root:Milvus")
    if root.has_collection("r_docs"):
        root.drop_collection("r_docs")
    root.create_collection("r_docs", dimension=DIM)
    root.insert("r_docs", rows(3))
    for token in (None, "root:wrong", "nobody:Milvus", "not-a-user-password"):
        refused(lambda: client(secured, token).insert("r_docs", rows(2, start=100)))
    got = root.query("r_docs", filter="id >= 0", output_fields=["id"], consistency_level="Strong")
    assert sorted(r["id"] for r in got) == [0, 1, 2]


def test_a_user_does_what_its_roles_grant_and_nothing_else(secured):
    root = client(secured, "root:Milvus")
    for user in ("r_alice", "r_bob"):
        if user in root.list_users():
            root.drop_user(user)
    for role in ("r_reader", "r_writer"):
        if role in root.list_roles():
            root.drop_role(role, force_drop=True)
    for name in ("r_books", "r_other"):
        if root.has_collection(name):
            root.drop_collection(name)
        root.create_collection(name, dimension=DIM)
        root.insert(name, rows(5))

    root.create_user("r_alice", "alice-secret")
    refused(lambda: root.create_user("r_alice", "again-secret"), "exists")
    refused(lambda: root.create_user("r_bob", "short"), "6 to 256")
    root.create_user("r_bob", "bob-secret")
    assert set(root.list_users()) >= {"root", "r_alice", "r_bob"}

    alice = client(secured, "r_alice:alice-secret")
    # Authenticated, but no role grants anything yet.
    refused(lambda: alice.search("r_books", [[0.5] * DIM], limit=2), "PrivilegeSearch")
    refused(lambda: alice.create_collection("r_new", dimension=DIM), "PrivilegeCreateCollection")

    # v1: one privilege on one collection of `default`.
    root.create_role("r_reader")
    root.grant_privilege("r_reader", "Collection", "Search", "r_books")
    root.grant_privilege("r_reader", "Collection", "Query", "r_books")
    root.grant_role("r_alice", "r_reader")
    assert root.describe_user("r_alice")["roles"] == ("r_reader",)
    assert len(alice.search("r_books", [[0.5] * DIM], limit=2)[0]) == 2
    got = alice.query("r_books", filter="id >= 0", output_fields=["id"])
    assert sorted(r["id"] for r in got) == [0, 1, 2, 3, 4]
    refused(lambda: alice.search("r_other", [[0.5] * DIM], limit=2), "PrivilegeSearch")
    refused(lambda: alice.insert("r_books", rows(1, start=50)), "PrivilegeInsert")
    # Through an alias, the collection's grants apply (Milvus resolves aliases first).
    if "r_books_nick" in root.list_aliases("r_books")["aliases"]:
        root.drop_alias("r_books_nick")
    root.create_alias("r_books", "r_books_nick")
    assert len(alice.query("r_books_nick", filter="id >= 0")) == 5
    refused(lambda: alice.insert("r_books_nick", rows(1, start=50)), "permission deny")
    root.drop_alias("r_books_nick")
    refused(lambda: alice.create_user("r_carol", "carol-secret"), "PrivilegeCreateOwnership")
    granted = root.describe_role("r_reader")["privileges"]
    assert sorted((g["object_type"], g["object_name"], g["privilege"]) for g in granted) == [
        ("Collection", "r_books", "Query"),
        ("Collection", "r_books", "Search"),
    ], granted

    # v2: a built-in privilege group on every collection of the database.
    root.create_role("r_writer")
    root.grant_privilege_v2("r_writer", "CollectionReadWrite", "*", db_name="default")
    root.grant_role("r_bob", "r_writer")
    bob = client(secured, "r_bob:bob-secret")
    bob.insert("r_other", rows(2, start=200))
    got = bob.query("r_other", filter="id >= 200", output_fields=["id"], consistency_level="Strong")
    assert sorted(r["id"] for r in got) == [200, 201]
    # A collection-level group covers the collection calls Milvus checks as global ones.
    assert bob.describe_collection("r_other")["collection_name"] == "r_other"
    refused(lambda: alice.describe_collection("r_books"), "PrivilegeDescribeCollection")
    refused(lambda: bob.drop_collection("r_other"), "PrivilegeDropCollection")
    refused(lambda: bob.create_alias("r_other", "r_nick"), "PrivilegeCreateAlias")

    # Revoked, and a role taken away: refused again (this front forgets at once).
    root.revoke_privilege("r_reader", "Collection", "Search", "r_books")
    refused(lambda: alice.search("r_books", [[0.5] * DIM], limit=2), "PrivilegeSearch")
    root.revoke_role("r_bob", "r_writer")
    refused(lambda: bob.insert("r_other", rows(1, start=300)), "PrivilegeInsert")

    # admin may do everything.
    root.grant_role("r_bob", "admin")
    bob.create_collection("r_by_bob", dimension=DIM)
    bob.drop_collection("r_by_bob")

    # Passwords: a user changes its own with the old one; the old one stops working.
    alice.update_password("r_alice", "alice-secret", "alice-new-secret")
    refused(lambda: client(secured, "r_alice:alice-secret").query("r_books", filter="id >= 0"))
    again = client(secured, "r_alice:alice-new-secret")
    assert len(again.query("r_books", filter="id >= 0")) == 5
    refused(lambda: again.update_password("r_bob", "bob-secret", "hijacked-bob"), "UpdateUser")

    # A role given to a user is dropped only when forced; root and built-ins stay.
    refused(lambda: root.drop_role("r_reader"), "given to user")
    root.drop_role("r_reader", force_drop=True)
    assert root.describe_user("r_alice")["roles"] == ()
    refused(lambda: root.drop_user("root"), "cannot be dropped")
    refused(lambda: root.drop_role("admin"), "cannot be dropped")
    root.drop_user("r_alice")
    refused(lambda: client(secured, "r_alice:alice-new-secret").query("r_books", filter="id >= 0"))
    root.drop_user("r_bob")
    root.drop_role("r_writer")
    for name in ("r_books", "r_other"):
        root.drop_collection(name)


def test_with_authorization_off_users_and_roles_are_kept_and_nothing_is_checked(sluice_open):
    c = client(sluice_open)
    for user in ("r_dave",):
        if user in c.list_users():
            c.drop_user(user)
    if "r_ops" in c.list_roles():
        c.drop_role("r_ops", force_drop=True)
    c.create_user("r_dave", "dave-secret")
    c.create_role("r_ops")
    c.grant_role("r_dave", "r_ops")
    c.grant_privilege_v2("r_ops", "ClusterReadOnly", "*", db_name="*")
    assert c.describe_user("r_dave")["roles"] == ("r_ops",)
    assert [
        (g["object_type"], g["object_name"], g["db_name"], g["privilege"])
        for g in c.describe_role("r_ops")["privileges"]
    ] == [("Global", "*", "*", "ClusterReadOnly")]
    assert "r_ops" in c.list_roles() and "admin" in c.list_roles()
    # Any token (or none) works: nothing is checked.
    anyone = client(sluice_open, "r_dave:wrong-password")
    assert "default" in anyone.list_databases()
    refused(lambda: c.grant_privilege("r_ops", "Collection", "Fly", "*"), "Fly")
    refused(lambda: c.grant_privilege("r_ops", "Table", "Search", "*"), "Table")
    c.drop_user("r_dave")
    c.drop_role("r_ops")


@pytest.fixture(scope="module")
def sluice_open():
    with tempfile.TemporaryDirectory(prefix="sluice-rbac-off-") as d:
        s = Server(Path(d))
        s.start()
        try:
            yield s
        finally:
            s.stop()


def test_custom_privilege_groups_are_granted_and_callers_list_what_they_may_use(secured):
    """A custom privilege group grants what it holds (changes act at once); the built-in groups
    are listed with it; a caller lists only the collections its grants name, root all."""
    root = client(secured, "root:Milvus")
    if "r_carol" in root.list_users():
        root.drop_user("r_carol")
    if "r_viewer" in root.list_roles():
        root.drop_role("r_viewer", force_drop=True)
    groups = {g["privilege_group"] for g in root.list_privilege_groups()}
    if "r_lookers" in groups:
        root.drop_privilege_group("r_lookers")
    for name in ("r_g_books", "r_g_other"):
        if root.has_collection(name):
            root.drop_collection(name)
        root.create_collection(name, dimension=DIM)
        root.insert(name, rows(4))

    root.create_privilege_group("r_lookers")
    root.add_privileges_to_group("r_lookers", ["Search", "DescribeCollection"])
    refused(lambda: root.add_privileges_to_group("r_lookers", ["CollectionAdmin"]), "not a privilege")
    refused(lambda: root.create_privilege_group("Insert"), "exists")
    listed = {g["privilege_group"]: set(g["privileges"]) for g in root.list_privilege_groups()}
    assert listed["r_lookers"] == {"Search", "DescribeCollection"}
    assert "Insert" in listed["CollectionReadWrite"] and len(listed) == 10, listed

    root.create_user("r_carol", "carol-secret")
    root.create_role("r_viewer")
    root.grant_privilege_v2("r_viewer", "r_lookers", "r_g_books", db_name="default")
    root.grant_role("r_carol", "r_viewer")
    carol = client(secured, "r_carol:carol-secret")
    assert len(carol.search("r_g_books", [[0.5] * DIM], limit=2)[0]) == 2
    assert carol.describe_collection("r_g_books")["collection_name"] == "r_g_books"
    refused(lambda: carol.query("r_g_books", filter="id >= 0"), "PrivilegeQuery")
    refused(lambda: carol.search("r_g_other", [[0.5] * DIM], limit=2), "PrivilegeSearch")
    assert carol.list_collections() == ["r_g_books"]
    assert {"r_g_books", "r_g_other"} <= set(root.list_collections())

    root.add_privileges_to_group("r_lookers", ["Query"])
    assert len(carol.query("r_g_books", filter="id >= 0")) == 4
    root.remove_privileges_from_group("r_lookers", ["Search"])
    refused(lambda: carol.search("r_g_books", [[0.5] * DIM], limit=2), "PrivilegeSearch")

    refused(lambda: root.drop_privilege_group("r_lookers"), "r_viewer")
    refused(lambda: root.drop_privilege_group("CollectionReadOnly"), "cannot be dropped")
    root.revoke_privilege_v2("r_viewer", "r_lookers", "r_g_books", db_name="default")
    root.drop_privilege_group("r_lookers")
    assert carol.list_collections() == []
    root.drop_user("r_carol")
    root.drop_role("r_viewer")
    for name in ("r_g_books", "r_g_other"):
        root.drop_collection(name)


def test_users_roles_and_groups_are_backed_up_and_restored_elsewhere(secured, sluice_open, pb):
    """BackupRBAC (what milvus-backup calls) gives every user with its password hash, role,
    grant and custom group; RestoreRBAC on another deployment merges them — the user logs in
    there with the same password — and a backup holding a password Sluice did not hash is
    refused whole."""
    from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

    root = client(secured, "root:Milvus")
    if "r_erin" in root.list_users():
        root.drop_user("r_erin")
    if "r_backed" in root.list_roles():
        root.drop_role("r_backed", force_drop=True)
    if "r_backed_g" in {g["privilege_group"] for g in root.list_privilege_groups()}:
        root.drop_privilege_group("r_backed_g")
    root.create_user("r_erin", "erin-secret")
    root.create_role("r_backed")
    root.create_privilege_group("r_backed_g")
    root.add_privileges_to_group("r_backed_g", ["Query", "Search"])
    root.grant_privilege("r_backed", "Collection", "Insert", "r_books")
    root.grant_privilege_v2("r_backed", "r_backed_g", "*", db_name="default")
    root.grant_role("r_erin", "r_backed")

    auth = [("authorization", base64.b64encode(b"root:Milvus").decode())]
    secured_stub = milvus_pb2_grpc.MilvusServiceStub(grpc.insecure_channel(secured.milvus))
    backup = secured_stub.BackupRBAC(milvus_pb2.BackupRBACMetaRequest(), metadata=auth)
    assert backup.status.code == 0, backup.status
    meta = backup.RBAC_meta
    erin = next(u for u in meta.users if u.user == "r_erin")
    assert erin.password.startswith("pbkdf2-sha256$") and "erin-secret" not in erin.password
    assert [r.name for r in erin.roles] == ["r_backed"]
    # Without the privilege (a user holding no admin role), no backup.
    with pytest.raises(grpc.RpcError) as e:
        secured_stub.BackupRBAC(
            milvus_pb2.BackupRBACMetaRequest(),
            metadata=[("authorization", base64.b64encode(b"r_erin:erin-secret").decode())],
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED

    other = client(sluice_open)
    open_stub = milvus_pb2_grpc.MilvusServiceStub(grpc.insecure_channel(sluice_open.milvus))
    bad = milvus_pb2.RBACMeta()
    bad.CopyFrom(meta)
    stray = bad.users.add()
    stray.user = "r_stray"
    stray.password = "$2a$10$somebcrypthashfromamilvusbackup"
    refused_restore = open_stub.RestoreRBAC(milvus_pb2.RestoreRBACMetaRequest(RBAC_meta=bad))
    assert refused_restore.code != 0 and "r_stray" in refused_restore.reason, refused_restore
    assert "r_erin" not in other.list_users()

    for _ in range(2):  # merging twice changes nothing more
        done = open_stub.RestoreRBAC(milvus_pb2.RestoreRBACMetaRequest(RBAC_meta=meta))
        assert done.code == 0, done
    assert other.describe_user("r_erin")["roles"] == ("r_backed",)
    granted = sorted(
        (g["object_type"], g["object_name"], g["privilege"])
        for g in other.describe_role("r_backed")["privileges"]
    )
    assert granted == [("Collection", "*", "r_backed_g"), ("Collection", "r_books", "Insert")]
    groups = {g["privilege_group"]: set(g["privileges"]) for g in other.list_privilege_groups()}
    assert groups["r_backed_g"] == {"Query", "Search"}
    coord = pb.coord_grpc.CoordinatorStub(grpc.insecure_channel(sluice_open.address))
    ok = coord.Authenticate(pb.coord.AuthenticateRequest(name="r_erin", password="erin-secret"))
    assert ok.name == "r_erin" and list(ok.roles) == ["r_backed"]
    with pytest.raises(grpc.RpcError):
        coord.Authenticate(pb.coord.AuthenticateRequest(name="r_erin", password="wrong-secret"))

    for c in (root, other):
        c.drop_user("r_erin")
        c.drop_role("r_backed", force_drop=True)
        c.drop_privilege_group("r_backed_g")
