// The test database of scripts/devdb.py: mongo-java-server's in-memory backend (Maven Central,
// de.bwaldvogel:mongo-java-server-memory-backend) on 127.0.0.1, with two things of this project's own:
//  - the version it reports: 5.0 (wire version 13). Out of the box it says wire 8, which PyMongo 4.20
//    refuses ("requires at least 9"); nothing else about the server changes.
//  - an outage on demand: "pause" on standard input closes the listening socket and every client
//    connection, as a crashed server does; "resume" listens again on the same port over the same data
//    (a restarted server). Each command is answered on standard output ("paused", "resumed").
// Usage: java -cp <jars>:<this> CollectorDevDB PORT   (0: a free port; the first line out is the port)
import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.QueryResult;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.wire.message.MongoMessage;
import de.bwaldvogel.mongo.wire.message.MongoQuery;
import io.netty.channel.Channel;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.time.Clock;
import java.util.Collection;
import java.util.List;

public final class CollectorDevDB {
    private static final String HOST = "127.0.0.1";

    /** The backend, kept across a pause: MongoServer.shutdownNow() closes its backend (dropping the data). */
    static final class Kept implements MongoBackend {
        private final MongoBackend inner;

        Kept(MongoBackend inner) { this.inner = inner; }

        void reallyClose() { inner.close(); }

        @Override public void close() { /* a pause: the data stays */ }
        @Override public void handleClose(Channel channel) { inner.handleClose(channel); }
        @Override public Document handleCommand(Channel channel, String database, String command, Document query) {
            return inner.handleCommand(channel, database, command, query);
        }
        @Override public QueryResult handleQuery(MongoQuery query) { return inner.handleQuery(query); }
        @Override public Document handleMessage(MongoMessage message) { return inner.handleMessage(message); }
        @Override public void dropDatabase(String database) { inner.dropDatabase(database); }
        @Override public Collection<Document> getCurrentOperations(MongoQuery query) {
            return inner.getCurrentOperations(query);
        }
        @Override public Document getServerStatus() { return inner.getServerStatus(); }
        @Override public void closeCursors(List<Long> cursorIds) { inner.closeCursors(cursorIds); }
        @Override public Clock getClock() { return inner.getClock(); }
        @Override public void enableOplog() { inner.enableOplog(); }
        @Override public void disableOplog() { inner.disableOplog(); }
        @Override public MongoDatabase resolveDatabase(String database) { return inner.resolveDatabase(database); }
        @Override public MongoBackend version(MongoVersion version) { inner.version(version); return this; }
    }

    /** What the server says it is: MongoDB 5.0, wire version 13 (the library's own 5.0 says wire 8). */
    static final MongoVersion REPORTED = new MongoVersion() {
        @Override public List<Integer> getVersionArray() { return List.of(5, 0, 0); }
        @Override public int getWireVersion() { return 13; }
    };

    private static MongoServer server;

    private static synchronized int listen(Kept backend, int port) {
        server = new MongoServer(backend);
        server.bind(HOST, port);
        return server.getLocalAddress().getPort();
    }

    private static synchronized void close() {
        if (server != null) {
            server.shutdownNow();
            server = null;
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: CollectorDevDB PORT");
            System.exit(2);
        }
        Kept backend = new Kept(new MemoryBackend().version(REPORTED));
        int port = listen(backend, Integer.parseInt(args[0]));
        Runtime.getRuntime().addShutdownHook(new Thread(() -> { close(); backend.reallyClose(); }));
        System.out.println(port);
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {  // end of input: serve on until SIGTERM
            switch (line.trim()) {
                case "pause" -> { close(); System.out.println("paused"); }
                case "resume" -> { close(); listen(backend, port); System.out.println("resumed"); }
                default -> System.out.println("unknown command: " + line.trim());
            }
            System.out.flush();
        }
        Thread.currentThread().join();
    }
}
