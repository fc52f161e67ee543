"""The throwaway PostgreSQL fixture (tests/pg.py) is a real server that psycopg, SQLAlchemy,
Optuna's RDBStorage and MLflow's store all use; it listens on loopback only and goes away."""

import socket

import psutil
from pg import PostgresServer


def test_fixture_database_works_with_psycopg_sqlalchemy_optuna_and_mlflow(postgres_url, postgres_server):
    import optuna
    import psycopg
    import sqlalchemy
    from mlflow.tracking import MlflowClient

    assert postgres_url.startswith(f"postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/test_")
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("select current_database()")).scalar() == postgres_url.rsplit("/", 1)[1]
        assert "PostgreSQL" in conn.execute(sqlalchemy.text("select version()")).scalar()
    engine.dispose()
    with psycopg.connect(host="127.0.0.1", port=postgres_server.port, user="postgres", dbname="postgres") as conn:
        assert conn.execute("show listen_addresses").fetchone()[0] == "127.0.0.1"

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(postgres_url)
    study = optuna.create_study(study_name="fixture", storage=storage, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    reloaded = optuna.load_study(study_name="fixture", storage=postgres_url)
    assert len(reloaded.trials) == 3 and reloaded.best_value == study.best_value

    client = MlflowClient(tracking_uri=postgres_server.create_database())  # MLflow's own schema migrations
    run = client.create_run(client.create_experiment("pg"))
    client.log_metric(run.info.run_id, "m", 1.5)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.5}


def test_each_test_gets_its_own_empty_database(postgres_url):
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as conn:
        tables = conn.execute(sqlalchemy.text(
            "select count(*) from information_schema.tables where table_schema = 'public'")).scalar()
    engine.dispose()
    assert tables == 0


def test_server_stops_and_leaves_nothing_behind(postgres_server):
    server = PostgresServer(bindir=postgres_server.bindir).start()
    folder, port = server.folder, server.port
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    server.stop()
    assert not folder.exists()
    try:  # gone, or a zombie waiting for PID 1 (the postmaster was daemonised by pg_ctl)
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
