"""The cheap head check `up` makes on every run: the head read from the scripts' text, the
database's revision in one psycopg query, and `migrate up` of a database already at head
without Alembic. Each must agree with Alembic, which decides whenever they cannot."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from atendeai_ctl.db import migrations
from atendeai_ctl.errors import AtendeaiError
from tests.db_helpers import APP_ROLE

ROOT = Path(__file__).parent.parent


def _alembic_heads(directory: Path) -> list[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(directory))
    return list(ScriptDirectory.from_config(cfg).get_heads())


def _script(directory: Path, name: str, revision: str, down: str) -> None:
    (directory / "versions" / f"{name}.py").write_text(
        textwrap.dedent(
            f'''\
            """{name}

            Revision ID: {revision}
            """
            revision: str = "{revision}"
            down_revision = {down}
            branch_labels = None
            depends_on = None


            def upgrade() -> None:
                pass


            def downgrade() -> None:
                pass
            '''
        )
    )


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    """A migrations directory with the project's env.py and no revisions yet."""
    directory = tmp_path / "migrations"
    (directory / "versions").mkdir(parents=True)
    for name in ("env.py", "script.py.mako"):
        (directory / name).write_text((ROOT / "migrations" / name).read_text())
    return directory


def test_the_projects_head_is_alembics() -> None:
    assert [migrations.script_head(ROOT / "migrations")] == _alembic_heads(ROOT / "migrations")


def test_a_merge_revision_is_the_one_head(scripts: Path) -> None:
    _script(scripts, "a", "aaa", "None")
    _script(scripts, "b", "bbb", '"aaa"')
    _script(scripts, "c", "ccc", '"aaa"')
    _script(scripts, "m", "mmm", '("bbb", "ccc")')
    assert migrations.script_head(scripts) == "mmm"
    assert _alembic_heads(scripts) == ["mmm"]


def test_two_heads_or_an_unreadable_script_give_no_answer(scripts: Path) -> None:
    """No answer means `up` runs the job and Alembic decides (and refuses two heads)."""
    _script(scripts, "a", "aaa", "None")
    _script(scripts, "b", "bbb", '"aaa"')
    _script(scripts, "c", "ccc", '"aaa"')
    assert migrations.script_head(scripts) is None
    assert len(_alembic_heads(scripts)) == 2
    (scripts / "versions" / "c.py").write_text("revision = make_id()\n")
    assert migrations.script_head(scripts) is None
    assert migrations.script_head(scripts.parent / "nowhere") is None


def test_database_revision_follows_alembic(database_url: str) -> None:
    assert migrations.database_revision(database_url) is None  # never migrated
    migrations.upgrade(database_url, "0001")
    assert migrations.database_revision(database_url) == "0001"
    migrations.upgrade(database_url)
    assert migrations.database_revision(database_url) == migrations.script_head()
    migrations.rollback(database_url, to="base")
    assert migrations.database_revision(database_url) is None  # at base: no version table


def test_database_revision_of_a_wrong_password_is_unauthorized(database_url: str) -> None:
    parts = urlsplit(database_url)
    netloc = f"{parts.username}:wrong-password@{parts.hostname}:{parts.port}"
    url = urlunsplit(parts._replace(netloc=netloc))
    with pytest.raises(AtendeaiError) as err:
        migrations.database_revision(url)
    assert err.value.code == "unauthorized"


def test_up_at_head_sets_the_app_password_without_importing_alembic(database_url: str) -> None:
    migrations.upgrade(database_url, app_password="first-password-123")
    code = textwrap.dedent(
        """
        import json, sys
        from atendeai_ctl.db import migrations
        outcome = migrations.upgrade(sys.argv[1], app_password="second-password-456")
        print(json.dumps({
            **outcome.to_dict(),
            "app_password_set": outcome.app_password_set,
            "heavy": sorted(m for m in ("alembic", "sqlalchemy") if m in sys.modules),
        }))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, database_url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    import json

    outcome = json.loads(done.stdout)
    head = migrations.script_head()
    assert outcome["before"] == outcome["target"] == head
    assert outcome["planned"] == outcome["applied"] == []
    assert outcome["app_password_set"] is True
    assert outcome["heavy"] == []
    password = "second-password-456"
    app = psycopg.conninfo.make_conninfo(database_url, user=APP_ROLE, password=password)
    with psycopg.connect(app) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (APP_ROLE,)
