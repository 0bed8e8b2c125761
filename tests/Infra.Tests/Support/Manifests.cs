using System.Collections.Concurrent;
using System.Text;
using System.Text.Json.Nodes;

namespace EventPipeline.Infra.Tests.Support;

/// <summary>
/// Renders infra/k8s targets with <c>kubectl kustomize</c>. infra/ is copied to a temporary folder first and each
/// overlay's secrets.env is made from its committed secrets.env.example (the real file is never committed), so the
/// example is proven complete by every render.
/// </summary>
public static class Manifests
{
    public static readonly string[] Targets = ["base", "overlays/dev", "overlays/prod"];
    public static readonly string[] Overlays = ["overlays/dev", "overlays/prod"];

    private static readonly Lazy<string> Workspace = new(CreateWorkspace);
    private static readonly ConcurrentDictionary<string, Lazy<Rendered>> Cache = new();

    public static Rendered Render(string target) => Cache.GetOrAdd(target, t => new Lazy<Rendered>(() => RenderNow(t))).Value;

    /// <summary>Runs kustomize on a folder of the temporary copy; for tests that change a copy on purpose.</summary>
    public static (int ExitCode, string Stdout, string Stderr) Kustomize(string directory) =>
        Repo.Run(Repo.Kubectl, directory, "kustomize", directory);

    public static string WorkspacePath(string target) => Path.Combine(Workspace.Value, "infra", "k8s", target);

    private static Rendered RenderNow(string target)
    {
        var (code, stdout, stderr) = Kustomize(WorkspacePath(target));
        if (code != 0)
        {
            throw new InvalidOperationException($"kubectl kustomize {target} failed ({code}): {stderr}");
        }

        return new Rendered(target, Yaml.ParseDocuments(stdout));
    }

    private static string CreateWorkspace()
    {
        // All of infra/: the dev overlay loads infra/prometheus and infra/grafana (folders with their own kustomization).
        var root = Path.Combine(Path.GetTempPath(), "eventpipeline-infra-tests-" + Guid.NewGuid().ToString("N")[..8]);
        var infra = Repo.PathOf("infra");
        foreach (var file in Directory.EnumerateFiles(infra, "*", SearchOption.AllDirectories))
        {
            var relative = Path.GetRelativePath(infra, file);
            if (file.StartsWith(Repo.Schemas + Path.DirectorySeparatorChar, StringComparison.Ordinal) || Path.GetFileName(file) == "secrets.env")
            {
                continue;
            }

            var destination = Path.Combine(root, "infra", relative);
            Directory.CreateDirectory(Path.GetDirectoryName(destination)!);
            File.Copy(file, destination);
            if (Path.GetFileName(file) == "secrets.env.example")
            {
                File.Copy(file, Path.Combine(Path.GetDirectoryName(destination)!, "secrets.env"));
            }
        }

        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { Directory.Delete(root, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        };
        return root;
    }
}

public sealed record Workload(string Kind, string Name, JsonObject Object)
{
    public JsonObject Template => (JsonObject)Object["spec"]!["template"]!;

    public JsonObject PodSpec => (JsonObject)Template["spec"]!;

    public IReadOnlyDictionary<string, string> PodLabels => Rendered.StringMap(Template["metadata"]?["labels"]);

    public IReadOnlyDictionary<string, string> PodAnnotations => Rendered.StringMap(Template["metadata"]?["annotations"]);

    public IEnumerable<JsonObject> Containers => PodSpec["containers"]!.AsArray().Cast<JsonObject>();

    public JsonObject MainContainer => Containers.First();

    public string Image => (string)MainContainer["image"]!;

    /// <summary>Named and numbered container ports of the pod.</summary>
    public IEnumerable<(string? Name, long Port, string Protocol)> Ports =>
        Containers.SelectMany(c => c["ports"]?.AsArray().Cast<JsonObject>() ?? [])
            .Select(p => ((string?)p["name"], (long)p["containerPort"]!, (string?)p["protocol"] ?? "TCP"));
}

public sealed class Rendered(string target, IReadOnlyList<JsonObject> objects)
{
    public string Target { get; } = target;

    public IReadOnlyList<JsonObject> Objects { get; } = objects;

    public IEnumerable<JsonObject> OfKind(string kind) => Objects.Where(o => (string?)o["kind"] == kind);

    public JsonObject? Find(string kind, string name) => OfKind(kind).FirstOrDefault(o => Name(o) == name);

    public JsonObject Get(string kind, string name) =>
        Find(kind, name) ?? throw new InvalidOperationException($"{Target}: no {kind} {name}");

    public IEnumerable<Workload> Workloads =>
        Objects.Where(o => (string?)o["kind"] is "Deployment" or "StatefulSet")
            .Select(o => new Workload((string)o["kind"]!, Name(o), o));

    public Workload Workload(string name) => Workloads.Single(w => w.Name == name);

    /// <summary>Workloads running an EventPipeline service image (not the brokers).</summary>
    public IEnumerable<Workload> AppWorkloads => Workloads.Where(w => w.Image.StartsWith("eventpipeline/", StringComparison.Ordinal));

    /// <summary>
    /// The environment a container gets: envFrom ConfigMaps and Secrets, then env (values, ConfigMap and Secret key
    /// references resolved against the rendered objects; a missing reference throws).
    /// </summary>
    public Dictionary<string, string> EnvironmentOf(Workload workload, JsonObject container)
    {
        var env = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var source in container["envFrom"]?.AsArray().Cast<JsonObject>() ?? [])
        {
            if (source["configMapRef"] is JsonObject cm)
            {
                foreach (var (k, v) in ConfigMapData((string)cm["name"]!))
                {
                    env[k] = v;
                }
            }

            if (source["secretRef"] is JsonObject secret)
            {
                foreach (var (k, v) in SecretData((string)secret["name"]!))
                {
                    env[k] = v;
                }
            }
        }

        foreach (var item in container["env"]?.AsArray().Cast<JsonObject>() ?? [])
        {
            var name = (string)item["name"]!;
            if (item["value"] is JsonNode value)
            {
                env[name] = value.GetValue<string>();
            }
            else if (item["valueFrom"]?["secretKeyRef"] is JsonObject sk)
            {
                env[name] = SecretData((string)sk["name"]!).TryGetValue((string)sk["key"]!, out var v)
                    ? v
                    : throw new InvalidOperationException($"{Target}: {workload.Name} env {name}: secret {sk["name"]} has no key {sk["key"]}");
            }
            else if (item["valueFrom"]?["configMapKeyRef"] is JsonObject ck)
            {
                env[name] = ConfigMapData((string)ck["name"]!).TryGetValue((string)ck["key"]!, out var v)
                    ? v
                    : throw new InvalidOperationException($"{Target}: {workload.Name} env {name}: configmap {ck["name"]} has no key {ck["key"]}");
            }
            else
            {
                env[name] = "<fieldRef>";
            }
        }

        return env;
    }

    public Dictionary<string, string> ConfigMapData(string name) =>
        new(StringMap(Get("ConfigMap", name)["data"]), StringComparer.Ordinal);

    public Dictionary<string, string> SecretData(string name)
    {
        var secret = Get("Secret", name);
        var data = StringMap(secret["data"]).ToDictionary(kv => kv.Key, kv => Encoding.UTF8.GetString(Convert.FromBase64String(kv.Value)));
        foreach (var (k, v) in StringMap(secret["stringData"]))
        {
            data[k] = v;
        }

        return data;
    }

    public static string Name(JsonObject o) => (string?)o["metadata"]?["name"] ?? "";

    public static IReadOnlyDictionary<string, string> StringMap(JsonNode? node) =>
        node is JsonObject map
            ? map.ToDictionary(kv => kv.Key, kv => kv.Value is null ? "" : kv.Value.GetValueKind() == System.Text.Json.JsonValueKind.String ? kv.Value.GetValue<string>() : kv.Value.ToJsonString())
            : new Dictionary<string, string>();

    public static bool Selects(IReadOnlyDictionary<string, string> matchLabels, IReadOnlyDictionary<string, string> labels) =>
        matchLabels.All(kv => labels.TryGetValue(kv.Key, out var v) && v == kv.Value);

    public override string ToString() => Target;
}
