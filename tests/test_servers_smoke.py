import psycopg
import redis


def test_postgres_fixture_gives_a_fresh_database(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname='public'"
        ).fetchone() == (0,)


def test_redis_fixture_requires_its_password(redis_url: str) -> None:
    assert redis.Redis.from_url(redis_url).ping()
