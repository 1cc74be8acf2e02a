// Preloaded into Portkey's Node server (node --import): its start script listens on every
// interface and has no option for a host, and the benchmark serves on loopback only.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, ...rest) {
  if (typeof port === "number" && typeof rest[0] !== "string") return listen.call(this, port, "127.0.0.1", ...rest);
  return listen.call(this, port, ...rest);
};
