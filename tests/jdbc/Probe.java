// What pgjdbc does in everyday use, one step per line: "<step> ok <value>" or
// "<step> ERROR <SQLSTATE> <message>". tests/jdbc.rs runs it against PostgreSQL and
// through pgwarden and compares the two outputs line by line.
// Arguments: URL, user, password, then optionally sslmode.
import java.sql.*;
import java.util.*;

public class Probe {
    interface Step {
        Object call() throws Exception;
    }

    static void step(String name, Step step) {
        try {
            System.out.println(name + " ok " + step.call());
        } catch (Exception e) {
            String state = (e instanceof SQLException) ? ((SQLException) e).getSQLState() : e.getClass().getName();
            System.out.println(name + " ERROR " + state + " " + String.valueOf(e.getMessage()).split("\n")[0]);
        }
    }

    static Object one(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            rs.next();
            return rs.getObject(1);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        Properties p = new Properties();
        p.setProperty("user", args[1]);
        p.setProperty("password", args[2]);
        p.setProperty("socketTimeout", "20");
        p.setProperty("connectTimeout", "10");
        if (args.length > 3) {
            p.setProperty("sslmode", args[3]);
        }
        Connection c = DriverManager.getConnection(url, p);
        Connection other = DriverManager.getConnection(url, p);
        step("ddl", () -> {
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE IF EXISTS jt; CREATE TABLE jt(id int PRIMARY KEY, v text, b bytea, ts timestamptz, n numeric)");
            }
            return true;
        });
        step("metadata-tables", () -> {
            int n = 0;
            try (ResultSet rs = c.getMetaData().getTables(null, "public", "jt", new String[] {"TABLE"})) {
                while (rs.next()) n++;
            }
            return n;
        });
        step("metadata-columns", () -> {
            List<String> names = new ArrayList<>();
            try (ResultSet rs = c.getMetaData().getColumns(null, "public", "jt", "%")) {
                while (rs.next()) names.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
            }
            return names;
        });
        // Past prepareThreshold (5) pgjdbc switches to a named server-side statement.
        step("prepared-loop", () -> {
            long sum = 0;
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1")) {
                for (int i = 0; i < 20; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        sum += rs.getInt(1);
                    }
                }
            }
            return sum;
        });
        step("batch-insert", () -> {
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO jt VALUES (?, ?, ?, '2024-01-02 03:04:05+00', ?)")) {
                for (int i = 0; i < 500; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "v" + i);
                    ps.setBytes(3, new byte[] {1, 2, (byte) i});
                    ps.setBigDecimal(4, new java.math.BigDecimal(i + ".5"));
                    ps.addBatch();
                }
                return Arrays.stream(ps.executeBatch()).sum();
            }
        });
        step("commit", () -> {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("UPDATE jt SET v = 'x' WHERE id < 10");
            }
            c.commit();
            c.setAutoCommit(true);
            return one(other, "SELECT count(*) FROM jt WHERE v = 'x'");
        });
        step("rollback", () -> {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("DELETE FROM jt");
            }
            c.rollback();
            c.setAutoCommit(true);
            return one(c, "SELECT count(*) FROM jt");
        });
        // setFetchSize in a transaction: Execute with a row limit, PortalSuspended.
        step("fetch-size-cursor", () -> {
            c.setAutoCommit(false);
            long n = 0, sum = 0;
            try (Statement s = c.createStatement()) {
                s.setFetchSize(7);
                try (ResultSet rs = s.executeQuery("SELECT id FROM jt ORDER BY id")) {
                    while (rs.next()) {
                        n++;
                        sum += rs.getInt(1);
                    }
                }
            }
            c.commit();
            c.setAutoCommit(true);
            return n + "/" + sum;
        });
        step("error-then-next", () -> {
            try (Statement s = c.createStatement()) {
                try {
                    s.execute("SELECT 1/0");
                } catch (SQLException e) {
                    return e.getSQLState() + " then " + one(c, "SELECT 42");
                }
            }
            return "no error";
        });
        step("failed-transaction", () -> {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                try {
                    s.execute("SELECT 1/0");
                } catch (SQLException e) {
                }
                try {
                    s.execute("SELECT 1");
                    return "no error";
                } catch (SQLException e) {
                    return e.getSQLState();
                }
            } finally {
                c.rollback();
                c.setAutoCommit(true);
            }
        });
        step("savepoint", () -> {
            c.setAutoCommit(false);
            Savepoint sp = c.setSavepoint();
            try (Statement s = c.createStatement()) {
                s.execute("INSERT INTO jt(id) VALUES (100000)");
            }
            c.rollback(sp);
            c.commit();
            c.setAutoCommit(true);
            return one(c, "SELECT count(*) FROM jt WHERE id = 100000");
        });
        // A server-prepared statement whose result type changes: pgjdbc sees 0A000
        // "cached plan must not change result type" and prepares it again.
        step("schema-change", () -> {
            try (PreparedStatement ps = c.prepareStatement("SELECT * FROM jt WHERE id = ?")) {
                for (int i = 0; i < 6; i++) {
                    ps.setInt(1, i);
                    ps.executeQuery().close();
                }
                try (Statement s = c.createStatement()) {
                    s.execute("ALTER TABLE jt ADD COLUMN extra int");
                }
                ps.setInt(1, 1);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    return rs.getMetaData().getColumnCount();
                }
            }
        });
        step("binary-values", () -> {
            try (PreparedStatement ps = c.prepareStatement("SELECT b, ts, n FROM jt WHERE id = ?")) {
                String last = null;
                for (int i = 0; i < 8; i++) {
                    ps.setInt(1, 3);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        last = Arrays.toString(rs.getBytes(1)) + " " + rs.getTimestamp(2).toInstant() + " " + rs.getBigDecimal(3);
                    }
                }
                return last;
            }
        });
        step("settings-stay-with-their-connection", () -> {
            try (Statement s = c.createStatement()) {
                s.execute("SET application_name = 'jdbc_probe'");
                s.execute("SET TIME ZONE 'Asia/Tokyo'");
            }
            return one(other, "SELECT current_setting('application_name') || '|' || current_setting('TimeZone')")
                + " / " + one(c, "SELECT current_setting('application_name') || '|' || current_setting('TimeZone')");
        });
        step("large-result", () -> {
            long n = 0;
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g")) {
                while (rs.next()) n++;
            }
            return n;
        });
        step("callable", () -> {
            try (CallableStatement cs = c.prepareCall("{? = call upper(?)}")) {
                cs.registerOutParameter(1, Types.VARCHAR);
                cs.setString(2, "abc");
                cs.execute();
                return cs.getString(1);
            }
        });
        step("notice", () -> {
            try (Statement s = c.createStatement()) {
                s.execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$");
                SQLWarning w = s.getWarnings();
                return w == null ? "none" : w.getMessage();
            }
        });
        step("copy-out", () -> {
            org.postgresql.copy.CopyManager copy = c.unwrap(org.postgresql.PGConnection.class).getCopyAPI();
            java.io.StringWriter out = new java.io.StringWriter();
            long rows = copy.copyOut("COPY (SELECT id FROM jt ORDER BY id LIMIT 5) TO STDOUT", out);
            return rows + " " + out.toString().replace("\n", ",");
        });
        step("copy-in", () -> {
            org.postgresql.copy.CopyManager copy = c.unwrap(org.postgresql.PGConnection.class).getCopyAPI();
            long rows = copy.copyIn("COPY jt(id, v) FROM STDIN", new java.io.StringReader("9001\ta\n9002\tb\n"));
            return rows + " " + one(other, "SELECT count(*) FROM jt WHERE id > 9000");
        });
        step("query-timeout-cancels", () -> {
            try (Statement s = c.createStatement()) {
                s.setQueryTimeout(1);
                s.execute("SELECT pg_sleep(10)");
                return "not cancelled";
            } catch (SQLException e) {
                return e.getSQLState() + " then " + one(c, "SELECT 5");
            }
        });
        step("cleanup", () -> {
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE jt");
            }
            return true;
        });
        c.close();
        other.close();
        System.out.println("done");
    }
}
