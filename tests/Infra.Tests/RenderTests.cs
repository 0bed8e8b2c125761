using System.Text.Json.Nodes;
using EventPipeline.Infra.Tests.Support;

namespace EventPipeline.Infra.Tests;

public class RenderTests
{
    public static TheoryData<string> Targets => [.. Manifests.Targets];

    public static TheoryData<string> Overlays => [.. Manifests.Overlays];

    [Theory]
    [MemberData(nameof(Targets))]
    public void Kustomize_renders_the_target(string target)
    {
        var rendered = Manifests.Render(target);

        Assert.NotEmpty(rendered.Objects);
        foreach (var obj in rendered.Objects)
        {
            Assert.False(string.IsNullOrEmpty((string?)obj["apiVersion"]), $"{target}: an object without apiVersion");
            Assert.False(string.IsNullOrEmpty(Rendered.Name(obj)), $"{target}: a {obj["kind"]} without a name");
            if ((string?)obj["kind"] != "Namespace")
            {
                Assert.Equal("eventpipeline", (string?)obj["metadata"]!["namespace"]);
            }
        }

        Assert.Equal(["producer-api", "worker-cpu", "worker-io"],
            rendered.AppWorkloads.Where(w => w.Kind == "Deployment" && w.Name != "downstream-receiver").Select(w => w.Name).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void A_broken_kustomization_fails_to_render()
    {
        // The render check can fail: a kustomization naming a missing resource is an error, not an empty output.
        var copy = Path.Combine(Path.GetTempPath(), "eventpipeline-broken-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(copy);
        try
        {
            File.WriteAllText(Path.Combine(copy, "kustomization.yaml"), "resources:\n  - does-not-exist.yaml\n");
            var (code, _, stderr) = Manifests.Kustomize(copy);
            Assert.NotEqual(0, code);
            Assert.Contains("does-not-exist.yaml", stderr);
        }
        finally
        {
            Directory.Delete(copy, recursive: true);
        }
    }

    [Theory]
    [MemberData(nameof(Overlays))]
    public void Real_secret_files_are_ignored_and_only_examples_are_committed(string overlay)
    {
        Assert.True(File.Exists(Path.Combine(Repo.K8s, overlay, "secrets.env.example")), $"{overlay}/secrets.env.example is missing");

        var ignored = Repo.Run("git", Repo.Root, "check-ignore", "-q", $"infra/k8s/{overlay}/secrets.env");
        Assert.True(ignored.ExitCode == 0, $"infra/k8s/{overlay}/secrets.env is not ignored by git");

        var tracked = Repo.Run("git", Repo.Root, "ls-files", "infra/k8s");
        Assert.Equal(0, tracked.ExitCode);
        Assert.DoesNotContain(tracked.Stdout.Split('\n'), f => f.EndsWith("secrets.env", StringComparison.Ordinal));
        Assert.Contains($"infra/k8s/{overlay}/secrets.env.example", tracked.Stdout.Split('\n'));
    }

    [Fact]
    public void The_readme_names_files_and_images_that_exist()
    {
        var readme = Repo.Read("infra", "k8s", "README.md");
        var paths = System.Text.RegularExpressions.Regex.Matches(readme, @"infra/k8s/[\w./-]*[\w/]")
            .Select(m => m.Value)
            .Where(p => !p.EndsWith("secrets.env", StringComparison.Ordinal)) // made by the user from the example
            .Distinct()
            .ToList();
        Assert.NotEmpty(paths);
        Assert.All(paths, p => Assert.True(File.Exists(Repo.PathOf(p)) || Directory.Exists(Repo.PathOf(p)), $"README names {p}, which does not exist"));
        foreach (var facts in ServiceFacts.All)
        {
            Assert.Contains(facts.ContainerRepository!, readme);
            Assert.Contains(facts.ContainerImageTag!, readme);
        }

        Assert.Contains("kubectl apply -k infra/k8s/overlays/dev", readme);
        Assert.Contains("get hpa,scaledobject -w", readme);
    }

    [Theory]
    [MemberData(nameof(Overlays))]
    public void Every_config_and_secret_reference_resolves(string overlay)
    {
        var rendered = Manifests.Render(overlay);
        var missing = new List<string>();
        foreach (var obj in rendered.Objects)
        {
            foreach (var (kind, name, key) in References(obj))
            {
                var target = rendered.Find(kind, name);
                if (target is null)
                {
                    missing.Add($"{obj["kind"]}/{Rendered.Name(obj)} -> {kind} {name}");
                }
                else if (key is not null)
                {
                    var keys = kind == "Secret" ? rendered.SecretData(name).Keys : rendered.ConfigMapData(name).Keys;
                    if (!keys.Contains(key))
                    {
                        missing.Add($"{obj["kind"]}/{Rendered.Name(obj)} -> {kind} {name} key {key}");
                    }
                }
            }
        }

        Assert.True(missing.Count == 0, string.Join("\n", missing));
        Assert.NotEmpty(rendered.OfKind("Secret"));
    }

    private static IEnumerable<(string Kind, string Name, string? Key)> References(JsonNode? node)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var (k, v) in o)
                {
                    if (v is JsonObject r && r["name"] is JsonValue)
                    {
                        switch (k)
                        {
                            case "configMapRef": yield return ("ConfigMap", (string)r["name"]!, null); break;
                            case "secretRef": yield return ("Secret", (string)r["name"]!, null); break;
                            case "configMapKeyRef": yield return ("ConfigMap", (string)r["name"]!, (string?)r["key"]); break;
                            case "secretKeyRef": yield return ("Secret", (string)r["name"]!, (string?)r["key"]); break;
                            case "configMap": // a volume or a projected source: the ConfigMap, and each key it picks
                                yield return ("ConfigMap", (string)r["name"]!, null);
                                foreach (var item in r["items"]?.AsArray().Cast<JsonObject>() ?? [])
                                {
                                    yield return ("ConfigMap", (string)r["name"]!, (string)item["key"]!);
                                }

                                break;
                        }
                    }

                    if (k == "secretTargetRef" && v is JsonArray refs)
                    {
                        foreach (var item in refs.Cast<JsonObject>())
                        {
                            yield return ("Secret", (string)item["name"]!, (string?)item["key"]);
                        }
                    }

                    foreach (var inner in References(v))
                    {
                        yield return inner;
                    }
                }

                break;
            case JsonArray a:
                foreach (var item in a)
                {
                    foreach (var inner in References(item))
                    {
                        yield return inner;
                    }
                }

                break;
        }
    }
}
